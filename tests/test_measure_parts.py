"""The Fisher inverse and the correlated-noise terms, taken apart (xr._measure, xr._noise)."""

import numpy as np
import xarray as xr

from scarlet_xr.xr import fisher_covariance, flux_variance_factor, flux_variance_ratio, flux_variance_terms
from scarlet_xr.xr._measure import _inverse


def _scaled(f):
    d = np.sqrt(np.diag(f))
    return f / np.outer(d, d)


def test_inverse_is_the_pseudo_inverse_when_well_and_ill_conditioned():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 60))
    f = _scaled(a @ a.T / 60 + 0.1 * np.eye(60))
    np.testing.assert_allclose(_inverse(f), np.linalg.inv(f), rtol=1e-9, atol=1e-12)
    # two parameters the data cannot tell apart: the pseudo-inverse (no infinities)
    g = f.copy()
    g[:, 1], g[1, :] = g[:, 0], g[0, :]
    inv = _inverse(g)
    assert np.all(np.isfinite(inv))
    np.testing.assert_allclose(inv, np.linalg.pinv(g, rcond=1e-12, hermitian=True), atol=1e-10)


def test_fisher_covariance_of_a_known_problem():
    # two sources, one band, flux templates only (shape parameters decoupled, unit information):
    # the flux covariance is the inverse of the 2 x 2 Gram matrix
    t = np.array([[4.0, 1.0], [1.0, 2.0]])
    blocks = {"ff": t[None], "fs": np.zeros((1, 2, 6)), "ss": np.eye(6)}
    var, center_cov, cov = fisher_covariance(blocks, 2, 1, [True, True], flux_covariance=True)
    np.testing.assert_allclose(cov[0], np.linalg.inv(t), rtol=1e-12)
    np.testing.assert_allclose(var[:, 0], np.diag(np.linalg.inv(t)), rtol=1e-12)
    np.testing.assert_allclose(center_cov, np.broadcast_to(np.eye(2), (2, 2, 2)), rtol=1e-12)


def test_noise_terms_add_up_to_the_factor():
    rng = np.random.default_rng(1)
    templates = [(2, 3, rng.uniform(0, 1, (2, 5, 6))), None, (0, 0, rng.uniform(0, 1, (2, 4, 4)))]
    w = rng.uniform(0.5, 2.0, (2, 12, 12))
    kernel = np.zeros((2, 3, 3))
    kernel[:, 1, 1] = 1.0
    kernel[:, 1, 0] = kernel[:, 1, 2] = 0.25
    plain = xr.Dataset()
    correlated = xr.Dataset({"noise_correlation": (("band", "ky", "kx"), kernel)})
    observed = [(templates, None, w, [0, 1]), (templates, None, w, [1, 2])]
    factor = flux_variance_factor(observed, [plain, correlated], 3, 3)
    white = np.zeros((3, 3))
    corr = np.zeros((3, 3))
    for (tpl, _, ww, bi), ds in zip(observed, [plain, correlated], strict=True):
        a, b = flux_variance_terms(tpl, ww, bi, ds, 3, 3)
        white += a
        corr += b
    np.testing.assert_allclose(factor, np.where(white > 0, corr / np.where(white > 0, white, 1), 1.0))
    np.testing.assert_array_equal(factor, flux_variance_ratio(white, corr))
    # band 0 only in the white observation: factor 1; band 2 only in the correlated one: > 1
    assert np.allclose(factor[[0, 2], 0], 1.0)
    assert np.all(factor[[0, 2], 2] > 1.05)
    assert np.all(factor[1] == 1.0)  # no template: no information, factor 1
