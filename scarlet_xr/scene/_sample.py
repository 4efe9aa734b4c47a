"""Posterior sampling of a Scene; draws as an ArviZ-style ``xarray.DataTree``.

With ``fix_morphology=True`` (the default) every morphology is frozen at its
current (fitted) state and only spectra and centres are sampled
(:meth:`scarlet_xr.core.SceneModel.frozen`): each component's fitted image
becomes a fixed template that the source's centre moves by a Fourier phase
ramp. At the fitted centres the model is the fitted model, and it is smooth
in the centres for every kind of morphology, free-form ones included (whose
centre the fit keeps fixed because their pixels absorb shifts; with the
pixels frozen, the centre carries the position uncertainty).

Free amplitudes that a fit left far below their noise (at the positivity
floor, where the data give a band no light) start the sampler at their noise
(:data:`LIFT_FRACTION`): at the floor the log-amplitude's posterior is flat
and the whitening at the mode useless in that direction.

With ``fix_morphology=False`` the scene's own model is sampled: every free
parameter, morphology parameters included (free-form pixels then need a
prior, see :func:`sample_scene`).

The posterior group holds, per draw: ``flux (source, band)`` (with variable
sources also ``light_curve (source, epoch, band)``), and when the
centres are sampled ``y, x (source)`` in the frame's pixel coordinates (as in
``/sources``) plus ``ra, dec (source)`` in degrees when the frame has a WCS.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import xarray as xr

from .._version import __version__
from ..core import FreeFormMorphology, SceneModel, Spectrum
from ..infer import sample as _sample
from ..xr import BAND, likelihood_for
from ._linear import _box_sums, set_spectra, solve_linear

__all__ = ["sample_scene", "attach_posterior", "summarize"]


def _check_degenerate(sources) -> None:
    for i, s in enumerate(sources):
        for comp in s.components:
            m = comp.morphology
            if isinstance(m, FreeFormMorphology) and not m.image.fixed and m.image.prior is None:
                raise ValueError(
                    f"source {i} ({s.name or 'unnamed'}): free-form morphology pixels without a "
                    "prior are degenerate with the spectrum amplitude (improper posterior); "
                    "expected fix_morphology=True or a prior on the morphology"
                )


LIFT_FRACTION = 0.1
"""The sampler starts a free amplitude below this fraction of its noise at its noise (see :func:`_lifted`)."""


def _lifted(model: SceneModel, likelihoods, psf, selected) -> SceneModel:
    """``model`` with free amplitudes far below their noise raised to it: the sampler's start.

    A fit leaves an amplitude the data do not support at the positivity floor
    (``set_spectra``: 1e-6 of the band's largest). Its posterior, flat in the
    flux, is flat in the log-amplitude the sampler sees there: the curvature
    at the start is ~0, the whitening's scale in that direction enormous, and
    NUTS crawls (measured on a five-source blend: two of four chains at the
    tree-depth cap on every draw, two with step sizes below 1e-4). Raised to
    its noise (the linear solve's conditional error), the amplitude starts
    near its posterior's mode (flux ~ its error when the data favour none).
    """
    comps = [(i, c) for i, s in enumerate(model.sources) for c in s.components]
    free = [i in selected and isinstance(c.spectrum, Spectrum) and not c.spectrum.values.fixed
            for i, c in comps]
    if not any(free):
        return model
    amps = np.array([np.asarray(c.spectrum(), float) if isinstance(c.spectrum, Spectrum)
                     else np.zeros(model.shape[0]) for _, c in comps])
    sol = solve_linear(model, likelihoods, psf)
    sums = np.asarray(_box_sums(model), float)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        noise = np.sqrt(sol.flux_variance) / sums
    low = np.asarray(free)[:, None] & np.isfinite(noise) & (amps < LIFT_FRACTION * noise)
    if not low.any():
        return model
    return set_spectra(model, np.where(low, noise, amps), floor=0.0)


def _derived(model: SceneModel) -> dict:
    out = {"flux": model.fluxes(), "center": jnp.stack([s.center.value for s in model.sources])}
    if model.num_epochs:
        out["light_curve"] = model.light_curves()
    return out


def sample_scene(
    scene,
    observations=None,
    *,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    key=None,
    fix_morphology: bool = True,
    fix_centers: bool = False,
    sources=None,
    progress: bool = True,
    **kwargs,
):
    """Sample the posterior of a (fitted) scene with NUTS.

    The sampler (:func:`scarlet_xr.infer.sample`) works on exactly the free
    parameters, in their unconstrained space, starts near the fitted
    solution and whitens the problem with the curvature at the mode. Free
    parameters without a prior get the documented defaults of
    :mod:`scarlet_xr.infer` (flat in flux, a 1-pixel normal on centres).

    Parameters
    ----------
    scene : Scene
        Usually the fitted scene (``scene.fit(obs)``).
    observations : Dataset, sequence or mapping of Datasets, optional
        Default: those the scene was fitted to (their bound likelihoods are
        reused; see :meth:`Scene.bound_observations`).
    num_warmup, num_samples, num_chains : int
        Warm-up iterations, draws per chain and chains.
    seed : int
        Random seed (ignored if ``key`` is given).
    key : jax PRNG key, optional
    fix_morphology : bool
        Freeze morphologies at their current state (see module docstring).
        With ``False`` morphology parameters are sampled too; free-form
        pixels then need a prior.
    fix_centers : bool
        Keep all centres fixed (sample spectra only).
    sources : sequence of int, optional
        Indices of the sources to sample; the others stay fixed at their
        current state (default: all sources). The posterior's ``source``
        coordinate holds these indices.
    progress : bool
        ``tqdm.auto`` progress bar (honours ``TQDM_DISABLE``).
    **kwargs
        Passed to :func:`scarlet_xr.infer.sample` (``precision``,
        ``dense_mass``, ``target_accept``, ``max_tree_depth``,
        ``chain_method``, ``missing_prior``, ``default_sigma``, ...).

    Returns
    -------
    xarray.DataTree
        ArviZ groups ``posterior`` (``flux`` with dims ``chain, draw, source,
        band``; ``y``, ``x`` and, with a WCS, ``ra``, ``dec`` with dims
        ``chain, draw, source``) and ``sample_stats``, built with
        ``arviz_base.from_dict``.

    Raises
    ------
    ValueError
        If the scene is empty, or a sampled free-form morphology has no prior.
    """
    from arviz_base import from_dict

    bound = scene.bound_observations(observations)
    if len(scene) == 0:
        raise ValueError("the scene has no sources")
    frame = scene.frame
    all_sources = list(scene.sources)
    n_src = len(all_sources)
    selected = list(range(n_src)) if sources is None else [int(i) for i in sources]
    if not selected or len(set(selected)) != len(selected) or not all(0 <= i < n_src for i in selected):
        raise ValueError(
            f"sources must be distinct indices in 0..{n_src - 1}; got {sources!r}"
        )
    full = SceneModel(all_sources, frame.cube_shape, psf=frame.psf, num_epochs=len(frame.epochs))
    # the sampler has no sky: a likelihood bound with one is rebuilt without it
    liks = [b.likelihood if b.sky is None else likelihood_for(b.dataset, frame) for b in bound]
    if not full.num_epochs:
        full = _lifted(full, liks, frame.psf, set(selected))
    model = full.frozen(morphology=fix_morphology, fix_centers=fix_centers, selected=selected)
    if not fix_morphology:
        _check_degenerate(model.sources)
    sampled_centers = any(not model.sources[i].center.fixed for i in selected)
    res = _sample(model, liks, key=seed if key is None else key, num_warmup=num_warmup,
                  num_samples=num_samples, num_chains=num_chains, derived=_derived,
                  progress=progress, **kwargs)
    names = [all_sources[i].name or f"src{i}" for i in selected]
    sel = np.asarray(selected)
    post = {"flux": res.derived["flux"].astype(np.float64)[:, :, sel]}
    dims = {"flux": ["source", BAND]}
    if "light_curve" in res.derived and any(all_sources[i].num_epochs for i in selected):
        post["light_curve"] = res.derived["light_curve"].astype(np.float64)[:, :, sel]
        dims["light_curve"] = ["source", "epoch", BAND]
    if sampled_centers:
        c = res.derived["center"].astype(np.float64)[:, :, sel]
        post["y"] = c[..., 0] + frame.origin[0]
        post["x"] = c[..., 1] + frame.origin[1]
        dims["y"] = dims["x"] = ["source"]
        if frame.wcs is not None:
            ra, dec = frame.pixel_to_sky(c[..., 0], c[..., 1])
            post["ra"], post["dec"] = np.asarray(ra), np.asarray(dec)
            dims["ra"] = dims["dec"] = ["source"]
    coords = {"source": sel, BAND: list(frame.bands)}
    if "light_curve" in post:
        coords["epoch"] = list(frame.epochs)
    attrs = {
        "inference_library": "numpyro",
        "sampler": "NUTS (scarlet_xr.infer.sample, whitened at the mode)",
        "scarlet_xr_version": __version__,
        "num_warmup": int(res.num_warmup),
        "precision": res.precision,
        "sampling_time_s": float(res.time_s),
        "fix_morphology": int(bool(fix_morphology)),
        "fix_centers": int(bool(fix_centers)),
        "source_names": ",".join(names),
    }
    tree = from_dict({"posterior": post, "sample_stats": dict(res.sample_stats)},
                     dims=dims, coords=coords, attrs={"posterior": attrs, "sample_stats": attrs})
    ds = tree["posterior"].to_dataset().assign_coords(name=("source", names))
    units = {"flux": "model flux units", "light_curve": "model flux units", "y": "pixel", "x": "pixel",
             "ra": "deg", "dec": "deg"}
    for v, u in units.items():
        if v in ds.data_vars:
            ds[v].attrs["units"] = u
    tree["posterior"] = xr.DataTree(ds)
    tree.attrs.update(attrs)
    return tree


def attach_posterior(result_tree, posterior_tree):
    """Return a copy of a fit results tree with ``/posterior`` and ``/sample_stats`` added.

    Parameters
    ----------
    result_tree : xarray.DataTree
        From :meth:`Scene.to_datatree`.
    posterior_tree : xarray.DataTree
        From :func:`sample_scene`.

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    ValueError
        If ``posterior_tree`` lacks a group, or its sources or bands do not
        match ``/sources`` of the results.
    """
    for g in ("posterior", "sample_stats"):
        if g not in posterior_tree.children:
            raise ValueError(f"posterior tree must have a '{g}' group; got {list(posterior_tree.children)}")
    if "sources" in result_tree.children:
        src = result_tree["sources"]
        post = posterior_tree["posterior"]
        n_res = src.sizes.get("source", 0)
        idx = np.asarray(post["source"].values) if "source" in post.coords else np.zeros(0, int)
        if idx.size and (idx.min() < 0 or idx.max() >= n_res):
            raise ValueError(
                f"posterior source indices {idx.tolist()} are not in the results' sources 0..{n_res - 1}"
            )
        if BAND in src.coords and BAND in post.coords and list(src[BAND].values) != list(post[BAND].values):
            raise ValueError(
                f"posterior bands {list(post[BAND].values)} differ from result bands "
                f"{list(src[BAND].values)}"
            )
    out = result_tree.copy()
    for g in ("posterior", "sample_stats"):
        out[g] = posterior_tree[g].copy()
    return out


def summarize(posterior_tree, *, var_names=None, ci_prob: float = 0.68, ci_kind: str = "eti",
              round_to="none"):
    """Posterior mean, sd, credible interval, r-hat and ESS per quantity.

    A thin wrapper of ``arviz_stats.summary``.

    Parameters
    ----------
    posterior_tree : xarray.DataTree
        With a ``posterior`` group (from :func:`sample_scene` or a results
        tree after :func:`attach_posterior`).
    var_names : list of str, optional
        Default: all posterior variables.
    ci_prob : float
        Probability mass of the credible interval (default 0.68).
    ci_kind : {"eti", "hdi"}
        Equal-tailed or highest-density interval.
    round_to : int or "none"

    Returns
    -------
    pandas.DataFrame
        One row per scalar quantity (e.g. ``flux[3, i]``), columns ``mean,
        sd, eti68_lb, eti68_ub, ess_bulk, ess_tail, r_hat, mcse_mean,
        mcse_sd`` (ArviZ names).
    """
    from arviz_stats import summary

    if "posterior" not in posterior_tree.children:
        raise ValueError("expected a DataTree with a 'posterior' group")
    if not 0 < ci_prob < 1:
        raise ValueError(f"ci_prob must be in (0, 1); got {ci_prob}")
    return summary(posterior_tree, var_names=var_names, ci_prob=ci_prob, ci_kind=ci_kind,
                   round_to=round_to)

