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


def test_local_point_test_agrees_with_the_whole_scene(monkeypatch):
    """Above LOCAL_CHI2_COMPONENTS sources the point-vs-extended chi^2 re-solves only the strongly
    coupled neighbours: its chi^2 differences and choices match re-solving the whole scene."""
    import scarlet_xr as sx
    import scarlet_xr.scene._auto as auto
    from scarlet_xr.core import gaussian_psf_image
    from scarlet_xr.xr import likelihood_for

    rng = np.random.default_rng(11)
    n, bands = 96, ["g", "r", "i"]
    centers = rng.uniform(6, n - 6, (70, 2))
    yy, xx = np.mgrid[:n, :n]
    data = rng.normal(0, 0.1, (3, n, n))
    widths = np.where(np.arange(70) % 3 == 0, 1.7, rng.uniform(2.2, 3.5, 70))  # a third are stars
    for (cy, cx), s in zip(centers, widths, strict=True):
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
        data += rng.uniform(2, 20) * blob / blob.max()
    psf = np.stack([gaussian_psf_image(1.7, 21)] * 3)
    obs = sx.make_observation(data.astype(np.float32), variance=np.full((3, n, n), 0.01, np.float32),
                              psf=psf, bands=bands, name="crowd")
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds="sersic")
    model = scene.model()
    liks = [likelihood_for(obs, frame)]
    comp = [[k] for k in range(len(centers))]
    idx = list(range(len(centers)))
    assert len(idx) > auto.LOCAL_CHI2_COMPONENTS
    local = auto._delta_chi2_point(model, liks, frame, idx, comp)
    monkeypatch.setattr(auto, "LOCAL_CHI2_COMPONENTS", 10_000)
    whole = auto._delta_chi2_point(model, liks, frame, idx, comp)
    d_local = np.array([local[k] for k in idx])
    d_whole = np.array([whole[k] for k in idx])
    assert np.all((d_local > auto.EXTENT_PARAMETERS) == (d_whole > auto.EXTENT_PARAMETERS))
    np.testing.assert_allclose(d_local, d_whole, rtol=0.03, atol=0.5)
    # the data decide: the wide blobs are better extended, and not every source is
    assert (d_whole > auto.EXTENT_PARAMETERS).sum() > 20
