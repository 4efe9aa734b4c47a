"""The non-negative flux solve of the linear stage (scene._linear._solve_band)."""

import numpy as np
import pytest

from scarlet_xr.scene._linear import REINVERT_EVERY, _solve_band


def _reference(a, rhs):
    """The same active set, inverting afresh at every drop."""
    n = len(rhs)
    live = np.diag(a) > 0
    x = np.zeros(n)
    while live.any():
        idx = np.flatnonzero(live)
        sub = a[np.ix_(idx, idx)]
        s = np.sqrt(np.diag(sub))
        inv = np.linalg.inv(sub / np.outer(s, s) + 1e-10 * np.eye(len(s))) / np.outer(s, s)
        sol = inv @ rhs[idx]
        if np.all(sol >= 0):
            x[idx] = sol
            break
        live[idx[np.argmin(sol)]] = False
    return x


@pytest.mark.parametrize("seed", range(6))
def test_downdated_active_set_matches_inverting_afresh(seed):
    rng = np.random.default_rng(seed)
    n = [5, 40, 120, 200, 260, 90][seed]
    g = rng.normal(size=(n, n + 15))
    a = g @ g.T
    truth = np.where(rng.uniform(size=n) < 0.6, rng.uniform(0.5, 2, n), 0.0)
    rhs = a @ truth + rng.normal(size=n) * np.sqrt(np.diag(a))  # noisy: many unknowns want < 0
    if seed % 2:
        a[3] = 0.0
        a[:, 3] = 0.0  # an empty template
        rhs[3] = 0.0
    x, cov = _solve_band(a, rhs)
    ref = _reference(a, rhs)
    assert np.all(x >= 0)
    np.testing.assert_array_equal(x > 0, ref > 0)
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    if seed % 2:
        assert x[3] == 0 and np.all(cov[3] == 0)
    # optimality on the free set: the gradient vanishes there, and is >= 0 where x = 0 is kept
    grad = a @ x - rhs
    free = x > 0
    assert np.abs(grad[free]).max() < 1e-6 * np.abs(rhs).max()
    if seed >= 2:  # large problems drop more unknowns than one re-inversion period
        assert (~free & (np.diag(a) > 0)).sum() > REINVERT_EVERY
