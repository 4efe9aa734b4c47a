"""Layer ``viz``: static figures (matplotlib) and holoviews plots.

Plotting libraries are imported lazily inside the functions.
"""

from ._static import lupton_rgb as lupton_rgb
from ._static import plot_observation as plot_observation
