"""Layer ``accessor``: the ``.scarlet`` accessors on xarray objects, the one-line path.

Above ``scene`` (fitting) and ``widgets`` (``inspect``, imported lazily so that
``import scarlet_xr`` loads neither holoviews nor panel). Importing this package
registers the accessors; ``import scarlet_xr`` does.
"""

from ._accessor import ScarletDataArrayAccessor as ScarletDataArrayAccessor
from ._accessor import ScarletDatasetAccessor as ScarletDatasetAccessor
from ._accessor import ScarletDataTreeAccessor as ScarletDataTreeAccessor

__all__ = ["ScarletDataArrayAccessor", "ScarletDatasetAccessor", "ScarletDataTreeAccessor"]
