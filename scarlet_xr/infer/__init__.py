"""Layer ``infer``: fitting (optax) and sampling (numpyro) of core models."""

from ._fit import FitDivergedError as FitDivergedError
from ._fit import FitHistory as FitHistory
from ._fit import default_optimizer as default_optimizer
from ._fit import fit as fit
from ._fit import loss_function as loss_function
from ._params import free_filter as free_filter
from ._params import log_prior as log_prior
from ._params import partition_free as partition_free
from ._params import step_tree as step_tree
