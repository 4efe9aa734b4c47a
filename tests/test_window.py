"""Windowed fitting of far-apart sources on large images, and the memory check before a fit.

A large image with a few separated groups of sources is fitted group by group
on windows of the image (``fit_sources(windows="auto")``); the answer must be
the whole-frame fit's, the sources must come back in frame pixels with their
names, and a frame too large for memory is refused before any work.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest

import scarlet_xr as sx
from scarlet_xr.scene import fit_sources
from scarlet_xr.scene._window import (
    WINDOW_MARGIN,
    WINDOW_STEP,
    check_fit_memory,
    fit_memory_estimate,
    plan_windows,
)

TRUTH_FLUX = np.array([[40.0, 52.0], [25.0, 32.5], [60.0, 78.0]])


def _field(seed: int, size: int, noise: float = 0.05):
    """Two bands, a blended pair near one corner and a galaxy far from it (GalSim, Moffat PSFs)."""
    rng = np.random.default_rng(seed)
    scale = 0.2
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in (0.9, 0.8)]
    centers = np.array([[150.3, 140.6], [156.1, 146.9], [size - 140.4, size - 159.2]])
    data = rng.normal(0, noise, (2, size, size))
    c0 = size / 2 - 0.5
    shapes = [(1.0, 0.5), (1.5, 0.35), (0.8, 0.6)]
    for k, (cy, cx) in enumerate(centers):
        prof = galsim.Sersic(n=shapes[k][0], half_light_radius=shapes[k][1]).shear(e1=0.2, e2=-0.1)
        for b in range(2):
            im = galsim.ImageD(size, size, scale=scale)
            obj = galsim.Convolve(prof.withFlux(TRUTH_FLUX[k, b]), psfs[b])
            obj.drawImage(im, offset=galsim.PositionD(cx - c0, cy - c0))
            data[b] += im.array
    psf = np.stack([p.drawImage(nx=31, ny=31, scale=scale).array for p in psfs])
    obs = sx.make_observation(data, variance=np.full_like(data, noise**2), psf=psf, bands=["g", "r"],
                              name="field")
    return obs, centers


def test_plan_windows_groups_sources_that_can_interact():
    reach = 121 // 2 + WINDOW_MARGIN
    centers = np.array([[1000.0, 1000.0], [1006.0, 1003.0], [500.0, 666.0], [1500.0, 400.0],
                        [400.0, 1600.0], [1990.0, 1990.0]])
    plan = plan_windows((2000, 2000), centers, 121, num_bands=5)
    groups = sorted(tuple(int(i) for i in idx) for idx, _ in plan)
    assert groups == [(0, 1), (2,), (3,), (4,), (5,)]
    for idx, (y0, y1, x0, x1) in plan:
        assert (y1 - y0) % WINDOW_STEP == 0 and (x1 - x0) % WINDOW_STEP == 0
        assert 0 <= y0 < y1 <= 2000 and 0 <= x0 < x1 <= 2000
        c = centers[idx]
        # every source's largest box fits in its window, except where the frame ends
        assert np.all(c[:, 0] - reach >= y0) or y0 == 0
        assert np.all(c[:, 0] + reach <= y1) or y1 == 2000
        assert np.all(c[:, 1] - reach >= x0) or x0 == 0
        assert np.all(c[:, 1] + reach <= x1) or x1 == 2000
    # small frames and crowded fields are fitted whole by default; True splits anyway
    assert plan_windows((300, 300), centers[:1] / 10, 121) is None
    crowded = np.random.default_rng(1).uniform(0, 2000, (400, 2))
    assert plan_windows((2000, 2000), crowded, 121, num_bands=5) is None
    assert plan_windows((600, 600), [[100.0, 100.0], [500.0, 500.0]], 121, windows="auto") is None
    assert len(plan_windows((600, 600), [[100.0, 100.0], [500.0, 500.0]], 121, windows=True)) == 2
    with pytest.raises(ValueError, match="windows must be"):
        plan_windows((600, 600), [[100.0, 100.0]], 121, windows="yes")


def test_windowed_fit_matches_the_whole_frame():
    obs, centers = _field(3, 1024)
    frame = sx.frame_from_observations(obs)
    names = ["pair_a", "pair_b", "far"]
    win = fit_sources(frame, obs, centers, names=names)  # default: 2 x 1024^2 pixel-bands -> windows
    whole = fit_sources(frame, obs, centers, names=names, windows=False)
    assert all("fitted in window" in c["reason"] for c in win.choices)
    assert not any("window" in c["reason"] for c in whole.choices)
    assert [s.name for s in win.sources] == names
    # sources come back in frame pixels (centres within a pixel of the given positions)
    assert np.max(np.abs(win.source_centers() - centers)) < 1.0
    # (the faint member of the pair, S/N ~ 15, moves by 0.27 px: about its centre's uncertainty)
    assert np.max(np.abs(win.source_centers() - whole.source_centers())) < 0.5
    err = whole.measured_flux_err
    # same answer as the whole frame: measured (seeds 3, 4, 5) at most 0.71 sigma apart; the windows
    # are within 1.3 sigma of the truth (the whole frame 1.9: its loss-relative stop comes earlier)
    assert np.max(np.abs(win.measured_flux - whole.measured_flux) / err) < 1.5
    assert np.max(np.abs(win.measured_flux - TRUTH_FLUX) / err) < 3.0
    assert win.history.status in ("converged", "max_steps") and np.all(np.isfinite(win.history.loss))
    # the results tree is on the whole frame
    tree = win.to_datatree(obs)
    assert tree["observations/field"]["model"].shape == (2, 1024, 1024)
    chi2 = float(tree["observations/field"].attrs["chi2_reduced"])
    assert 0.95 < chi2 < 1.05


def test_fit_too_large_for_memory_is_refused_before_work():
    obs, centers = _field(0, 320)
    frame = sx.frame_from_observations(obs)
    need = fit_memory_estimate({"field": obs}, frame)
    assert need > 0.5e9 + 80 * 2 * 320 * 320 - 1
    check_fit_memory({"field": obs}, frame, available=10 * need)  # enough: no error
    with pytest.raises(MemoryError, match=r"needs about .* GB; .* GB is available.*scarlet-xr survey"):
        check_fit_memory({"field": obs}, frame, available=need / 2)
