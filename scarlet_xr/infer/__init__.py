"""Layer ``infer``: fitting (optax) and sampling (numpyro) of core models."""

from ._batch import fit_batch as fit_batch
from ._batch import stack_trees as stack_trees
from ._batch import unstack_trees as unstack_trees
from ._fit import FitDivergedError as FitDivergedError
from ._fit import FitHistory as FitHistory
from ._fit import default_optimizer as default_optimizer
from ._fit import fit as fit
from ._fit import loss_function as loss_function
from ._fit import newton_step as newton_step
from ._fit import plateau_optimizer as plateau_optimizer
from ._fit import quasi_newton_optimizer as quasi_newton_optimizer
from ._fit import settling_optimizer as settling_optimizer
from ._params import free_filter as free_filter
from ._params import log_prior as log_prior
from ._params import partition_free as partition_free
from ._params import step_tree as step_tree
from ._programs import bound_compiled_programs as bound_compiled_programs
from ._programs import memory_map_count as memory_map_count
from ._programs import drop_compiled_programs as drop_compiled_programs
from ._programs import release_compiled_memory as release_compiled_memory
from ._programs import resident_memory_mb as resident_memory_mb
from ._programs import return_free_memory as return_free_memory
from ._refine import refinable as refinable
from ._refine import refine as refine
from ._sample import PosteriorSamples as PosteriorSamples
from ._sample import log_density as log_density
from ._sample import sample as sample

__all__ = [
    "FitDivergedError",
    "FitHistory",
    "bound_compiled_programs",
    "drop_compiled_programs",
    "release_compiled_memory",
    "resident_memory_mb",
    "return_free_memory",
    "PosteriorSamples",
    "default_optimizer",
    "fit",
    "fit_batch",
    "free_filter",
    "log_density",
    "log_prior",
    "loss_function",
    "memory_map_count",
    "newton_step",
    "partition_free",
    "plateau_optimizer",
    "quasi_newton_optimizer",
    "refinable",
    "refine",
    "sample",
    "settling_optimizer",
    "stack_trees",
    "step_tree",
    "unstack_trees",
]
