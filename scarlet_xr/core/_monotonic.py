"""Free-form morphology that is radially non-increasing from its centre.

Each pixel's value is its parent's value times ``sigmoid(u)``, where the
parent is the neighbouring pixel one step closer to the centre. The product
along the path to the centre is a sum of ``log sigmoid`` terms, computed by
pointer doubling over precomputed jump tables (``ceil(log2(depth))`` gathers of
the image, not one gather per ancestor), so the constraint is an exact, smooth
bijection (classic scarlet monotonicity without a projection step).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._constraints import Identity, LogPositive
from ._morphology import AbstractMorphology
from ._parameter import Parameter

__all__ = ["MonotonicMorphology", "monotonic_parents"]


def monotonic_parents(shape) -> np.ndarray:
    """Parent index (flattened) of every pixel; the centre is its own parent.

    The parent of the pixel at offset ``(dy, dx)`` is the 8-neighbour in the
    direction of the centre, ``(dy - round(dy / r), dx - round(dx / r))``.
    """
    h, w = shape
    cy, cx = h // 2, w // 2
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - cy, xx - cx
    r = np.hypot(dy, dx)
    with np.errstate(invalid="ignore", divide="ignore"):
        sy = np.where(r > 0, np.round(dy / np.where(r > 0, r, 1)), 0).astype(int)
        sx = np.where(r > 0, np.round(dx / np.where(r > 0, r, 1)), 0).astype(int)
    py, px = yy - sy, xx - sx
    return (py * w + px).ravel()


def _jumps(shape) -> np.ndarray:
    """Jump tables (k, npix): row ``j`` is every pixel's ancestor ``2**j`` steps up (the centre is fixed).

    With the centre's own term zero, ``k`` doublings ``s = s + s[jumps[j]]``
    turn each pixel's term into the sum over its path to the centre, for
    paths of up to ``2**k`` pixels (the table stops where every row would be
    the centre).
    """
    parents = monotonic_parents(shape)
    centre = (shape[0] // 2) * shape[1] + shape[1] // 2
    rows, jump = [], parents
    while np.any(jump != centre):
        rows.append(jump)
        jump = jump[jump]
    return np.stack(rows).astype(np.int32) if rows else np.zeros((0, parents.size), np.int32)


def _ancestors(shape) -> np.ndarray:
    """Table (npix, depth) of ancestor indices (excluding the centre), padded with -1."""
    parents = monotonic_parents(shape)
    n = parents.size
    centre = (shape[0] // 2) * shape[1] + shape[1] // 2
    chains = []
    for p in range(n):
        chain = []
        q = p
        while q != centre:
            chain.append(q)
            q = int(parents[q])
            if len(chain) > n:  # pragma: no cover - guards against a cycle
                raise RuntimeError("monotonic parent table has a cycle")
        chains.append(chain)
    depth = max(1, max(len(c) for c in chains))
    table = np.full((n, depth), -1, dtype=np.int32)
    for p, chain in enumerate(chains):
        table[p, : len(chain)] = chain
    return table


class MonotonicMorphology(AbstractMorphology):
    """Non-negative image that never increases away from its central pixel.

    Parameters
    ----------
    image : array (h, w)
        Initial image (odd sizes, >= 0, peak at the centre); values violating
        monotonicity are clipped to their parent's value.
    step : float
        Natural step of the unconstrained log-ratios.
    symmetric : bool
        Also impose 180-degree symmetry about the central pixel (removes the
        one-sided "spikes" a purely monotonic model can grow towards a neighbour).
    """

    peak: Parameter
    log_ratio: Parameter
    shape: tuple[int, int] = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)
    jumps: jax.Array | None = None
    ancestors: jax.Array | None = None  # scene files saved before the jump tables (2026-12-06)
    pixel_anchored: ClassVar[bool] = True

    def __init__(self, image, *, step: float = 0.05, symmetric: bool = False):
        arr = np.asarray(image, dtype=float)
        self.symmetric = bool(symmetric)
        if symmetric:
            arr = 0.5 * (arr + arr[::-1, ::-1])
        if arr.ndim != 2 or arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0:
            raise ValueError(f"monotonic image must be 2-D with odd sizes; got shape {arr.shape}")
        h, w = arr.shape
        c = (h // 2) * w + w // 2
        flat = np.clip(arr.ravel(), 0, None)
        peak = max(flat[c], 1e-12)
        parents = monotonic_parents(arr.shape)
        order = np.argsort(np.hypot(*(np.mgrid[:h, :w] - np.array([h // 2, w // 2])[:, None, None])).ravel())
        val = flat.copy()
        val[c] = peak
        ratio = np.ones_like(val)
        for p in order:
            if p == c:
                continue
            par = parents[p]
            v = min(max(val[p], 1e-4 * val[par]), 0.999 * val[par])
            val[p] = v
            ratio[p] = v / val[par]
        ratio[c] = 0.5
        u = np.log(ratio) - np.log1p(-ratio)
        self.peak = Parameter(peak, LogPositive(), step=0.03)
        self.log_ratio = Parameter(u.reshape(h, w), Identity(), step=step)
        # a traced (non-static) leaf: keeps the table out of the compiled constants
        self.jumps = jnp.asarray(_jumps(arr.shape))
        self.ancestors = None
        self.shape = (h, w)

    def __call__(self, offset):
        """Return the monotonic image (the offset is ignored)."""
        u = self.log_ratio.value
        if self.symmetric:
            u = 0.5 * (u + u[::-1, ::-1])
        ls = jax.nn.log_sigmoid(u.ravel())
        if self.jumps is None:  # a scene file with the ancestor table (npix, depth)
            ls = jnp.concatenate([ls, jnp.zeros((1,), ls.dtype)])  # index -1 -> 0
            logv = jnp.sum(ls[self.ancestors], axis=1)
        else:
            h, w = self.shape
            logv = ls.at[(h // 2) * w + w // 2].set(0.0)  # the centre is the peak itself
            for j in range(self.jumps.shape[0]):
                logv = logv + logv[self.jumps[j]]
        return (self.peak.value * jnp.exp(logv)).reshape(self.shape)

    @property
    def kind(self) -> str:
        """``"monotonic"`` or ``"symmetric"``."""
        return "symmetric" if self.symmetric else "monotonic"


