"""Layer ``viz``: static figures (matplotlib), holoviews plots and the offline HTML inspector.

Plotting libraries are imported lazily inside the functions; importing this
module loads neither holoviews nor bokeh.
"""

from ._figures import plot_loss as plot_loss
from ._figures import plot_posterior_pairs as plot_posterior_pairs
from ._figures import plot_sources as plot_sources
from ._figures import posterior_parameters as posterior_parameters
from ._holo import PANELS as PANELS
from ._holo import band_images as band_images
from ._holo import loss_plot as loss_plot
from ._holo import observation_panel as observation_panel
from ._holo import rgb_view as rgb_view
from ._holo import source_model_view as source_model_view
from ._holo import spectrum_plot as spectrum_plot
from ._html import inspector_document as inspector_document
from ._html import save_inspector_html as save_inspector_html
from ._report import write_report as write_report
from ._static import lupton_rgb as lupton_rgb
from ._static import plot_observation as plot_observation
from ._tree import check_tree as check_tree
from ._tree import observation_names as observation_names
from ._tree import residual_sigma as residual_sigma
from ._tree import source_labels as source_labels
from ._holo import catalog_row_html as catalog_row_html
from ._holo import deblended_view as deblended_view

__all__ = [
    "PANELS",
    "band_images",
    "catalog_row_html",
    "check_tree",
    "deblended_view",
    "inspector_document",
    "loss_plot",
    "lupton_rgb",
    "observation_names",
    "observation_panel",
    "plot_loss",
    "plot_observation",
    "plot_posterior_pairs",
    "plot_sources",
    "posterior_parameters",
    "residual_sigma",
    "rgb_view",
    "save_inspector_html",
    "source_labels",
    "source_model_view",
    "spectrum_plot",
    "write_report",
]
