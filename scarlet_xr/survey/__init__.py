"""Layer ``survey``: deblend whole catalogs and fields (bucketed, batched, distributed with dask).

``import scarlet_xr`` does not import dask; it is imported when a run starts.
"""

from ._bucket import BucketKey as BucketKey
from ._bucket import bucket_key as bucket_key
from ._bucket import prepare_blend as prepare_blend
from ._catalog import survey_catalog as survey_catalog
from ._field import deblend_field as deblend_field
from ._fits import read_blend as read_blend
from ._fits import write_blend_fits as write_blend_fits
from ._runner import deblend_catalog as deblend_catalog
from ._runner import read_catalog as read_catalog
from ._simulate import simulate_blends as simulate_blends
from ._simulate_field import simulate_field as simulate_field
from ._task import SURVEY_E_REL as SURVEY_E_REL

__all__ = [
    "SURVEY_E_REL",
    "BucketKey",
    "bucket_key",
    "deblend_catalog",
    "deblend_field",
    "prepare_blend",
    "read_blend",
    "read_catalog",
    "simulate_blends",
    "simulate_field",
    "survey_catalog",
    "write_blend_fits",
]
