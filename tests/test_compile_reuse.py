"""Compiled programs: one layout per small stamp, quicker compiles for one-scene programs."""

import jax
import jax.numpy as jnp
import numpy as np
from _compiles import count_compiles
from _sim_isolated import isolated

from scarlet_xr.core import filter_jit
from scarlet_xr.core._jit import QUICK_COMPILER_OPTIONS
from scarlet_xr.scene import fit_sources
from scarlet_xr.xr import frame_from_observations


def test_quick_filter_jit_gives_the_same_values_from_its_own_program():
    """``quick=True`` compiles a program of its own (other options), with the same result."""

    def poly(x, n):
        return jnp.sum(jnp.cumsum(x) ** n)

    quick, plain = filter_jit(poly, quick=True), filter_jit(poly)
    x = jnp.linspace(0.0, 1.0, 17)
    with count_compiles("poly") as hits:
        a = quick(x, 3)
        b = plain(x, 3)
        c = quick(x, 3)  # cached: no third compile
    assert len(hits) == 2, hits
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(a) == float(c)
    assert QUICK_COMPILER_OPTIONS["cpu"]["xla_backend_optimization_level"] == 1


def test_small_canonical_stamps_give_every_galaxy_the_frames_box_and_share_the_fit():
    """Two 32 px blends, a small and a large galaxy: one box size, one compiled fit loop."""
    fits = []
    jax.clear_caches()  # programs compiled by other tests of this process would hide the count
    with count_compiles("_chunk_impl") as hits:
        for seed, hlr in ((11, (0.2, 0.2)), (12, (1.1, 1.1))):
            obs, truth = isolated(seed, "galaxy", 45.0, size=32, hlr=hlr)
            frame = frame_from_observations(obs)
            before = len(hits)
            fitted = fit_sources(frame, obs, truth["center"][None], canonical=True, refine_fit=False,
                                 point_refit=False, misfit_pixels=False)
            fits.append((fitted, len(hits) - before, truth))
    (small, n_small, t_small), (large, n_large, t_large) = fits
    assert [c["kind"] for c in small.choices] == [c["kind"] for c in large.choices] == ["sersic"]
    boxes = [f.sources[0].components[0].morphology.shape[0] for f in (small, large)]
    assert boxes == [35, 35], boxes  # the largest canonical box a 32 px frame allows
    assert n_small >= 1 and n_large == 0, (n_small, n_large)
    for fitted, truth in ((small, t_small), (large, t_large)):
        err = np.abs(np.asarray(fitted.measured_flux)[0] / truth["flux"] - 1)
        assert np.median(err) < 0.1, err


def test_a_small_scene_shares_one_box_within_its_pixel_budget(monkeypatch):
    """Default layout of a 3-galaxy blend: one box size for every extended component (fewer
    stacks to compile); with no budget each keeps the box its size needs (three sizes here)."""
    from _sim import galsim_blend

    import scarlet_xr.scene._auto as auto

    obs, centers, fluxes, _ = galsim_blend(3, n_sources=3, size=51)
    frame = frame_from_observations(obs)

    def fitted():
        f = fit_sources(frame, obs, centers, refine_fit=False, point_refit=False, misfit_pixels=False)
        sizes = {c.morphology.shape[0] for s in f.sources for c in s.components if s.kind != "point"}
        return sizes, np.median(np.abs(np.asarray(f.measured_flux) / fluxes - 1), axis=1)

    one, err_one = fitted()
    monkeypatch.setattr(auto, "ONE_BOX_PIXELS", 0)
    own, err_own = fitted()
    assert len(one) == 1 and len(own) >= 2, (one, own)
    assert min(one) >= max(own), (one, own)  # the shared box holds what every source needs
    assert np.all(err_one < 0.06) and np.all(np.abs(err_one - err_own) < 0.01), (err_one, err_own)


def _galaxy_then_star(compiles):
    """Fit a 32 px galaxy blend, then a 32 px star blend (canonical); return their fits and
    append the number of fit-loop programs each compiled to ``compiles``."""
    jax.clear_caches()
    out = []
    with count_compiles("_chunk_impl") as hits:
        for seed, kind, snr in ((22, "galaxy", 45.0), (21, "star", 60.0)):
            obs, truth = isolated(seed, kind, snr, size=32, hlr=(0.8, 0.8))
            frame = frame_from_observations(obs)
            before = len(hits)
            fitted = fit_sources(frame, obs, truth["center"][None], canonical=True, refine_fit=False,
                                 point_refit=False, misfit_pixels=False)
            out.append((fitted, truth, len(hits) - before))
    compiles.extend(n for _, _, n in out)
    return out


def test_blends_whose_sources_are_other_kinds_share_the_canonical_programs(monkeypatch):
    """A galaxy (a Sersic after the model choice) and a star (a point) on 32 px stamps: the
    canonical layout holds a point, a Sersic and a bulge + disk whichever the blend has, so the
    star compiles no fit loop of its own; without the templates it compiles its second stage.
    The fluxes do not depend on the layout."""
    import scarlet_xr.scene._auto as auto

    counts = []
    with_t = _galaxy_then_star(counts)
    assert [c["kind"] for f, _, _ in with_t for c in f.choices] == ["sersic", "point"]
    assert counts[0] >= 1 and counts[1] == 0, counts
    monkeypatch.setattr(auto, "_layout_templates", lambda *args: ())
    counts = []
    without = _galaxy_then_star(counts)
    assert counts[1] >= 1, counts
    for (a, truth, _), (b, _, _) in zip(with_t, without, strict=True):
        np.testing.assert_allclose(a.measured_flux, b.measured_flux, rtol=1e-3)
        err = np.abs(np.asarray(a.measured_flux)[0] / truth["flux"] - 1)
        assert np.median(err) < 0.1, err
