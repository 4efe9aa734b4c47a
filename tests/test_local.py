"""The neighbourhood refit of the default path's later stages (``scene._local``)."""

import numpy as np
from _sim import galsim_blend

import scarlet_xr as sx
from scarlet_xr.infer._fit import loss_function
from scarlet_xr.scene._local import local_problem, merged, neighbourhood
from scarlet_xr.xr import frame_from_observations, normalize_observations


def test_neighbourhood_refit_has_the_whole_scenes_loss_with_the_rest_held(monkeypatch):
    """GalSim galaxies spread over a 181 px cutout: the neighbourhood of one source holds it and the
    sources whose boxes overlap its box, not the far ones; its loss against the data less the rest's
    model differs from the whole scene's loss by a constant (the rest's priors) whatever its
    parameters, so fitting it alone is fitting the scene with the rest held fixed."""
    import scarlet_xr.scene._auto as auto

    # boxes sized per source, as in the crowded scenes that refit neighbourhoods (six sources are
    # few enough to share one box by default, and one large box overlaps every other)
    monkeypatch.setattr(auto, "ONE_BOX_PIXELS", 0)
    obs, centers, _, _ = galsim_blend(seed=11, n_sources=6, size=181, separation=(30.0, 60.0))
    norm = normalize_observations({"sim": obs})
    frame = frame_from_observations(norm)
    scene = sx.fit_sources(frame, norm, [c - np.asarray(frame.origin, float) for c in centers],
                           max_steps=40, windows=False)
    model = scene.model()
    liks = [b.likelihood for b in scene.observations]
    sources = model.sources
    c = np.array([np.asarray(s.center.value, float) for s in sources])
    half = np.array([max(max(cc.morphology.shape) for cc in s.components) / 2 + frame.psf.shape[-1] / 2
                     for s in sources])
    overlap = np.abs(c[:, None] - c[None]).max(axis=2) < half[:, None] + half[None]
    # a source whose neighbourhood is at most half the scene and whose neighbours overlap the rest
    # (so that the rest's light matters to the neighbourhood's loss)
    k = next(j for j in range(len(sources))
             if overlap[j].sum() <= len(sources) // 2 and overlap[np.ix_(overlap[j], ~overlap[j])].any())
    idx = neighbourhood(sources, [k], frame.psf.shape[-1])
    assert idx == sorted(np.flatnonzero(overlap[k]).tolist())
    local = local_problem(model, [k], liks, frame.psf)
    assert local is not None
    got, sub, sub_liks = local
    assert got == idx
    offsets = []
    for scale in (1.0, 1.3, 0.7):
        scaled = []
        for src in sub.sources:  # every neighbour's light scaled: the ones beside the rest too
            comps = [sx.Component(sx.Spectrum(np.asarray(cc.spectrum.values.value) * scale,
                                              step=cc.spectrum.values.step), cc.morphology)
                     for cc in src.components]
            scaled.append(sx.Source(src.center, components=comps, name=src.name))
        s = type(sub)(scaled, sub.shape, psf=frame.psf)
        whole = float(loss_function(merged(model, idx, s, frame.psf), liks))
        part = float(loss_function(s, sub_liks))
        offsets.append(whole - part)
    # the losses change by thousands between the three; their difference does not
    assert np.ptp(offsets) < 0.02, offsets  # without the rest subtracted: 0.24
