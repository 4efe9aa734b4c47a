"""Layer ``widgets``: the interactive inspector (panel + holoviews).

Importing :mod:`scarlet_xr` does not import this module; it needs the
``widgets`` extra (``pip install scarlet_xr[widgets]``).
"""

from ._inspector import Inspector as Inspector
from ._inspector import export_html as export_html
from ._inspector import inspect as inspect

__all__ = ["Inspector", "export_html", "inspect"]
