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
    # larger than the 512-row blocks in which the inverse's upper triangle is mirrored; the input kept
    b = rng.normal(size=(1100, 1150))
    h = _scaled(b @ b.T / 1150)
    before = h.copy()
    inv = _inverse(h)
    np.testing.assert_array_equal(h, before)
    np.testing.assert_array_equal(inv, inv.T)
    np.testing.assert_allclose(inv @ h, np.eye(1100), atol=1e-8)
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


def test_fisher_covariance_with_a_parameter_left_out_and_a_coupled_shape():
    # a point source (no size parameter) and an extended one, two bands, flux-shape coupling:
    # against inverting the dense matrix of the kept parameters
    rng = np.random.default_rng(3)
    ns, nb = 2, 2
    n = ns * nb + 3 * ns
    a = rng.normal(size=(n, n + 4))
    full = a @ a.T
    keep = np.ones(n, bool)
    keep[ns * nb + 2] = False  # source 0's size
    ff = np.stack([full[b * ns:(b + 1) * ns, b * ns:(b + 1) * ns] for b in range(nb)])
    fs = np.stack([full[b * ns:(b + 1) * ns, ns * nb:] for b in range(nb)])
    ss = full[ns * nb:, ns * nb:]
    # the model has no flux-flux terms across bands: the reference has none either
    ref = full.copy()
    for b in range(nb):
        for c in range(nb):
            if b != c:
                ref[b * ns:(b + 1) * ns, c * ns:(c + 1) * ns] = 0
    idx = np.flatnonzero(keep)
    cov = np.linalg.inv(ref[np.ix_(idx, idx)])
    var, center_cov, fc = fisher_covariance({"ff": ff, "fs": fs, "ss": ss}, ns, nb, [False, True],
                                            flux_covariance=True)
    np.testing.assert_allclose(var.T.ravel(), np.diag(cov)[: ns * nb], rtol=1e-9)
    np.testing.assert_allclose(center_cov[1], cov[-3:-1, -3:-1], rtol=1e-9)
    np.testing.assert_allclose(center_cov[0], cov[ns * nb:ns * nb + 2, ns * nb:ns * nb + 2], rtol=1e-9)
    np.testing.assert_allclose(fc[1], cov[ns:2 * ns, ns:2 * ns], rtol=1e-9)


def test_templates_rendered_one_band_at_a_time_match_all_bands():
    # the measurements render Fisher templates one observation band at a time (memory): each band
    # must be what rendering all bands gives, for single images and cubes, inside and across edges
    import scarlet_xr as sx
    from scarlet_xr.datasets import hsc_cosmos_35
    from scarlet_xr.scene._init import _local_kernels, _render_stamps
    from scarlet_xr.xr import bind_observations

    obs, _ = hsc_cosmos_35()
    frame = sx.frame_from_observations(obs)
    renderer = bind_observations(obs, frame)[0].renderer
    nb, hh, ww = frame.cube_shape
    rng = np.random.default_rng(4)
    stamps = [(10, 12, rng.random((9, 7))), (-3, 30, rng.random((nb, 11, 13))), None,
              (hh - 5, ww - 6, rng.random((8, 8)))]
    full = _render_stamps(renderer, stamps, frame.cube_shape)
    kern = _local_kernels(renderer)
    assert sum(p is not None for p in full) == 3
    for j in range(nb):
        one = _render_stamps(renderer, stamps, frame.cube_shape, bands=[j], kernels=kern)
        for a, b in zip(full, one, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert a[:2] == b[:2] and b[2].shape == (1, *a[2].shape[1:])
                np.testing.assert_allclose(b[2][0], a[2][j], rtol=1e-12, atol=1e-15)
    # and a plane rendered on the whole frame agrees with the local rendering (band 2)
    y0, x0, img = stamps[0]
    plane = np.zeros((nb, hh, ww))
    plane[:, y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
    whole = np.asarray(renderer.render_numpy(plane))
    py, px, vals = full[0]
    np.testing.assert_allclose(vals[2], whole[2, py:py + vals.shape[1], px:px + vals.shape[2]],
                               atol=1e-6 * np.abs(whole[2]).max())


def test_half_light_radius_by_radius_bins_equals_sorting_every_sample():
    """The half-light radius found from radius bins (only the bin holding the half sorted) is the
    radius a full sort of the samples gives, on smooth, noisy and point-like images."""
    from scarlet_xr.xr._measure import _half_radius, half_light_radius

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:41, :41] - 20.0
    images, centroids = [], []
    for k in range(12):
        c = rng.uniform(-1, 1, 2)
        r = np.hypot(yy - c[0], (xx - c[1]) * rng.uniform(0.5, 1))
        img = np.exp(-(r / rng.uniform(0.3, 6)) ** (1 / rng.uniform(0.5, 4)))
        images.append(img + rng.normal(0, 0.02, img.shape) * (k % 2))
        centroids.append(20 + c)
    got = half_light_radius(np.array(images), np.array(centroids))
    for k, img in enumerate(images):
        r = np.hypot(*(np.array(np.mgrid[:41, :41], float) - np.array(centroids[k])[:, None, None]))
        f = np.clip(img, 0, None)
        order = np.argsort(r.ravel())
        cum = np.cumsum(f.ravel()[order])
        ref = r.ravel()[order][np.searchsorted(cum, 0.5 * cum[-1])]
        assert abs(_half_radius(r.ravel(), f.ravel()) - ref) < 1e-12
        assert np.isfinite(got[k]) and 0 < got[k] < 30
    assert _half_radius(np.zeros(4), np.ones(4)) == 0.0
