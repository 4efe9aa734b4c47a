"""Layer ``xr``: observations, results and I/O as xarray objects."""

from ._observation import BAND as BAND
from ._observation import X as X
from ._observation import Y as Y
from ._observation import check_observation as check_observation
from ._observation import make_observation as make_observation
from ._observation import observation_epoch as observation_epoch
from ._observation import observation_wcs as observation_wcs
from ._observation import wcs_to_header_string as wcs_to_header_string
from ._bound import BoundObservation as BoundObservation
from ._bound import bind_observations as bind_observations
from ._bound import check_same_observations as check_same_observations
from ._bridge import frame_from_observations as frame_from_observations
from ._bridge import likelihood_for as likelihood_for
from ._noise import NOISE_CORRELATION as NOISE_CORRELATION
from ._noise import estimate_noise_correlation as estimate_noise_correlation
from ._noise import flux_variance_factor as flux_variance_factor
from ._noise import flux_variance_ratio as flux_variance_ratio
from ._noise import flux_variance_terms as flux_variance_terms
from ._noise import with_noise_correlation as with_noise_correlation
from ._bridge import grid_offset as grid_offset
from ._bridge import normalize_observations as normalize_observations
from ._stamps import STAMP_X as STAMP_X
from ._stamps import STAMP_Y as STAMP_Y
from ._stamps import pack_stamps as pack_stamps
from ._stamps import source_image as source_image
from ._stamps import stamp_box as stamp_box
from ._results import build_result_tree as build_result_tree
from ._results import cube_to_stamps as cube_to_stamps
from ._measure import FLAGS as FLAGS
from ._measure import MASKED_FRACTION_LIMIT as MASKED_FRACTION_LIMIT
from ._measure import deblend_images as deblend_images
from ._measure import fisher_covariance as fisher_covariance
from ._measure import flag_descriptions as flag_descriptions
from ._measure import footprints as footprints
from ._measure import half_light_radius as half_light_radius
from ._measure import image_moments as image_moments
from ._measure import shape_from_moments as shape_from_moments
from ._photometry import resolve_zero_points as resolve_zero_points
from ._photometry import zero_point_from_header as zero_point_from_header
from ._catalog import CATALOG_COLUMNS as CATALOG_COLUMNS
from ._catalog import catalog_from_tree as catalog_from_tree
from ._catalog import select_columns as select_columns
from ._catalog import write_catalog as write_catalog
from ._catalog import write_deblended as write_deblended
from ._results import reduced_chi2 as reduced_chi2
from ._io import estimate_background as estimate_background
from ._io import open_observation as open_observation
from ._io import resolve_mask_bits as resolve_mask_bits
from ._io import MASK_HDUS as MASK_HDUS
from ._io import STDDEV_HDUS as STDDEV_HDUS
from ._io import VARIANCE_HDUS as VARIANCE_HDUS
from ._io import WEIGHT_HDUS as WEIGHT_HDUS
from ._observation import shift_wcs as shift_wcs
from ._resample import observation_coords as observation_coords
from ._resample import resampling_likelihood as resampling_likelihood

__all__ = [
    "BAND",
    "BoundObservation",
    "CATALOG_COLUMNS",
    "FLAGS",
    "MASKED_FRACTION_LIMIT",
    "MASK_HDUS",
    "STAMP_X",
    "STAMP_Y",
    "STDDEV_HDUS",
    "VARIANCE_HDUS",
    "WEIGHT_HDUS",
    "X",
    "Y",
    "bind_observations",
    "build_result_tree",
    "catalog_from_tree",
    "check_observation",
    "check_same_observations",
    "cube_to_stamps",
    "deblend_images",
    "estimate_background",
    "fisher_covariance",
    "flag_descriptions",
    "footprints",
    "frame_from_observations",
    "grid_offset",
    "half_light_radius",
    "image_moments",
    "likelihood_for",
    "NOISE_CORRELATION",
    "estimate_noise_correlation",
    "flux_variance_factor",
    "flux_variance_ratio",
    "flux_variance_terms",
    "with_noise_correlation",
    "make_observation",
    "normalize_observations",
    "observation_coords",
    "observation_epoch",
    "observation_wcs",
    "open_observation",
    "pack_stamps",
    "reduced_chi2",
    "resampling_likelihood",
    "resolve_mask_bits",
    "select_columns",
    "resolve_zero_points",
    "shape_from_moments",
    "shift_wcs",
    "source_image",
    "stamp_box",
    "wcs_to_header_string",
    "write_catalog",
    "write_deblended",
    "zero_point_from_header",
]
