"""Layer ``xr``: observations, results and I/O as xarray objects."""

from ._observation import BAND as BAND
from ._observation import X as X
from ._observation import Y as Y
from ._observation import check_observation as check_observation
from ._observation import make_observation as make_observation
from ._observation import observation_wcs as observation_wcs
from ._observation import wcs_to_header_string as wcs_to_header_string
from ._bridge import frame_from_observations as frame_from_observations
from ._bridge import likelihood_for as likelihood_for
from ._bridge import grid_offset as grid_offset
from ._bridge import normalize_observations as normalize_observations
from ._results import build_result_tree as build_result_tree
from ._results import reduced_chi2 as reduced_chi2
from ._io import estimate_background as estimate_background
from ._io import open_observation as open_observation
from ._observation import shift_wcs as shift_wcs
from ._accessor import ScarletDataArrayAccessor as ScarletDataArrayAccessor
from ._accessor import ScarletDatasetAccessor as ScarletDatasetAccessor
from ._accessor import ScarletDataTreeAccessor as ScarletDataTreeAccessor
from ._resample import observation_coords as observation_coords
from ._resample import resampling_likelihood as resampling_likelihood
