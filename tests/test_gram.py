"""The normal equations of rendered templates (``scene._init._gram``) against a dense sum."""

import numpy as np
import pytest

from scarlet_xr.scene._init import GRAM_TILE, _gram


def _dense(patches, data, weights, bands, num_bands):
    nbo, hh, ww = data.shape
    n = len(patches)
    full = np.zeros((n, nbo, hh, ww))
    for i, p in enumerate(patches):
        if p is not None:
            y0, x0, r = p
            full[i, :, y0 : y0 + r.shape[1], x0 : x0 + r.shape[2]] = r
    a = np.zeros((num_bands, n, n))
    rhs = np.zeros((num_bands, n))
    dd = np.zeros(num_bands)
    for c in range(nbo):
        f = full[:, c].reshape(n, -1)
        w = weights[c].ravel()
        a[bands[c]] += (f * w) @ f.T
        rhs[bands[c]] += (f * w) @ data[c].ravel()
        dd[bands[c]] += (w * data[c].ravel() ** 2).sum()
    return a, rhs, dd


@pytest.mark.parametrize("bands", [[0, 1, 2], [0, 1, 1]])
def test_gram_sums_every_overlap_across_tiles(bands):
    rng = np.random.default_rng(5)
    nbo, hh, ww = 3, 2 * GRAM_TILE + 7, GRAM_TILE + 11  # partial tiles at both edges
    data = rng.normal(size=(nbo, hh, ww))
    weights = rng.uniform(0.2, 2.0, size=(nbo, hh, ww))
    weights[:, 5:9, 3] = 0.0  # masked pixels
    patches = []
    for i in range(25):
        h, w = rng.integers(3, 45, size=2)
        h, w = min(h, hh), min(w, ww)
        y0, x0 = rng.integers(0, hh - h + 1), rng.integers(0, ww - w + 1)
        r = rng.normal(size=(nbo, h, w)).astype(np.float32)
        patches.append(None if i == 7 else (int(y0), int(x0), r))
    got = _gram(patches, data, weights, bands, 3)
    want = _dense(patches, data, weights, np.asarray(bands), 3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * np.abs(w).max())
    assert np.all(got[0][:, 7, :] == 0)  # an empty template stays out


def test_gram_refuses_a_template_outside_the_observation():
    data = np.zeros((1, 10, 10))
    with pytest.raises(ValueError, match="not inside"):
        _gram([(8, 0, np.ones((1, 4, 4)))], data, np.ones_like(data), [0], 1)


def test_nnls_on_the_normal_equations_matches_scipy_on_the_pixels():
    """The initial spectra's non-negative solve (no scipy.optimize import) finds scipy's optimum:
    full-rank and rank-deficient systems, solutions with and without zeros."""
    from scipy.optimize import nnls

    from scarlet_xr.scene._init import _nnls_gram

    rng = np.random.default_rng(7)
    worst, zeros = 0.0, 0
    for _ in range(400):
        m, n = int(rng.integers(3, 60)), int(rng.integers(1, 10))
        a = rng.normal(size=(m, n)) * rng.uniform(0.01, 100, n)
        if rng.uniform() < 0.3:
            a[:, -1] = a[:, 0]  # two identical templates
        y = rng.normal(size=m) + a @ np.abs(rng.normal(size=n)) * rng.uniform()
        ref, _ = nnls(a, y, maxiter=50 * n)
        got = _nnls_gram(a.T @ a, a.T @ y, 50 * n)
        assert got.shape == (n,) and np.all(got >= 0)
        r_ref, r_got = np.sum((a @ ref - y) ** 2), np.sum((a @ got - y) ** 2)
        worst = max(worst, (r_got - r_ref) / max(r_ref, 1e-12))
        zeros += int(np.any(got == 0))
    assert worst < 1e-7
    assert zeros > 50  # the constraint was active in many of them
    assert np.all(_nnls_gram(np.zeros((3, 3)), np.ones(3), 10) == 0)


def test_nnls_splits_uncoupled_sources_and_finds_the_same_optimum():
    """Templates in separate groups (no shared pixel) are solved group by group: the groups are
    the connected components (a chain of overlaps is one group) and the optimum is scipy's on
    the whole pixel problem."""
    from scipy.optimize import nnls

    from scarlet_xr.scene._init import _coupled_groups, _nnls_gram

    rng = np.random.default_rng(11)
    # 7 templates on 60 pixels: a chain 0-3-5 (pixels 0-24), a pair 1-6 (25-44), a loner 2,
    # an empty template 4
    a = np.zeros((60, 7))
    a[0:10, 0] = rng.uniform(0.5, 1, 10)
    a[8:18, 3] = rng.uniform(0.5, 1, 10)
    a[16:25, 5] = rng.uniform(0.5, 1, 9)
    a[25:40, 1] = rng.uniform(0.5, 1, 15)
    a[30:45, 6] = rng.uniform(0.5, 1, 15)
    a[45:60, 2] = rng.uniform(0.5, 1, 15)
    groups = _coupled_groups(a.T @ a)
    assert [g.tolist() for g in groups] == [[0, 3, 5], [1, 6], [2], [4]]
    for _ in range(50):
        y = a @ rng.normal(size=7) + rng.normal(size=60) * 0.3
        ref, _ = nnls(a, y, maxiter=350)
        got = _nnls_gram(a.T @ a, a.T @ y, 350)
        assert np.all(got >= 0) and got[4] == 0
        np.testing.assert_allclose(got, ref, atol=1e-9)
