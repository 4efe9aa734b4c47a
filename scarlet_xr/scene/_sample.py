"""Posterior sampling of a Scene; draws as an ArviZ-style ``xarray.DataTree``.

With ``fix_morphology=True`` (the default) every morphology is frozen at its
current (fitted) state and only spectra and centres are sampled:

* parametric morphologies (point, Gaussian, Sersic, ...) keep their shape
  parameters fixed; their centre moves the profile as in the fit;
* a free-form morphology becomes a fixed template image that the centre
  shifts by sub-pixel Fourier phase (the fit ignores the centre of free-form
  sources, whose pixels absorb shifts; with the pixels frozen the centre is
  what carries the position uncertainty). At the fitted centre the template
  reproduces the fitted model exactly.

The posterior group holds, per draw: ``flux (source, band)``, and when the
centres are sampled ``y, x (source)`` in the frame's pixel coordinates (as in
``/sources``) plus ``ra, dec (source)`` in degrees when the frame has a WCS.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._version import __version__
from ..core import (
    AbstractMorphology,
    Component,
    FreeFormMorphology,
    Identity,
    Parameter,
    SceneModel,
    Source,
    fourier_shift,
    is_parameter,
)
from ..infer import sample as _sample
from ..xr import BAND, likelihood_for, normalize_observations

__all__ = ["sample_scene", "attach_posterior", "summarize"]

_TEMPLATE_PAD = 2


class _ShiftedTemplate(AbstractMorphology):
    """A fixed image shifted by ``offset - offset0`` (Fourier phase); not sampled."""

    image: jax.Array
    offset0: jax.Array
    shape: tuple[int, int] = eqx.field(static=True)
    label: str = eqx.field(static=True)

    def __call__(self, offset):
        """Return the template shifted to ``offset``."""
        return fourier_shift(self.image, offset - self.offset0)

    @property
    def kind(self) -> str:
        """The kind of the morphology this template froze."""
        return self.label


def _fixed(p: Parameter) -> Parameter:
    if p.fixed:
        return p
    return Parameter(np.asarray(p.value, np.float64), p.constraint, prior=p.prior, fixed=True,
                     step=p.step)


def _freeze(source: Source, *, fix_morphology: bool, fix_center: bool) -> Source:
    c0 = np.asarray(source.center.value, np.float64)
    comps = []
    for comp in source.components:
        morph = comp.morphology
        if fix_morphology:
            if isinstance(morph, FreeFormMorphology):
                img = np.pad(np.asarray(morph.image.value, np.float64), _TEMPLATE_PAD)
                dt = morph.image.raw.dtype
                morph = _ShiftedTemplate(image=jnp.asarray(img, dt),
                                         offset0=jnp.asarray(c0 - np.round(c0), dt),
                                         shape=img.shape, label=morph.kind)
            else:
                morph = jax.tree_util.tree_map(
                    lambda x: _fixed(x) if isinstance(x, Parameter) else x, morph, is_leaf=is_parameter
                )
        comps.append(Component(comp.spectrum, morph))
    center = source.center
    if fix_center:
        center = _fixed(center)
    elif center.fixed:
        center = Parameter(c0, Identity(), prior=center.prior, step=center.step)
    return Source(center, components=comps, name=source.name)


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


def _derived(model: SceneModel) -> dict:
    return {
        "flux": model.fluxes(),
        "center": jnp.stack([s.center.value for s in model.sources]),
    }


def sample_scene(
    scene,
    observations,
    *,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    key=None,
    fix_morphology: bool = True,
    fix_centers: bool = False,
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
    observations : Dataset, sequence or mapping of Datasets
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

    obs = normalize_observations(observations)
    if len(scene) == 0:
        raise ValueError("the scene has no sources")
    sources = [_freeze(s, fix_morphology=fix_morphology, fix_center=fix_centers)
               for s in scene.sources]
    _check_degenerate(sources)
    frame = scene.frame
    model = SceneModel(sources, frame.cube_shape)
    liks = [likelihood_for(ds, frame) for ds in obs.values()]
    res = _sample(model, liks, key=seed if key is None else key, num_warmup=num_warmup,
                  num_samples=num_samples, num_chains=num_chains, derived=_derived,
                  progress=progress, **kwargs)
    names = [s.name or f"src{i}" for i, s in enumerate(sources)]
    post = {"flux": res.derived["flux"].astype(np.float64)}
    dims = {"flux": ["source", BAND]}
    sampled_centers = any(not s.center.fixed for s in sources)
    if sampled_centers:
        c = res.derived["center"].astype(np.float64)
        post["y"] = c[..., 0] + frame.origin[0]
        post["x"] = c[..., 1] + frame.origin[1]
        dims["y"] = dims["x"] = ["source"]
        if frame.wcs is not None:
            ra, dec = frame.pixel_to_sky(c[..., 0], c[..., 1])
            post["ra"], post["dec"] = np.asarray(ra), np.asarray(dec)
            dims["ra"] = dims["dec"] = ["source"]
    coords = {"source": np.arange(len(sources)), BAND: list(frame.bands)}
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
                     dims=dims, coords=coords, attrs=attrs)
    tree["posterior"] = tree["posterior"].assign_coords(name=("source", names))
    units = {"flux": "model flux units", "y": "pixel", "x": "pixel", "ra": "deg", "dec": "deg"}
    for v, u in units.items():
        if v in tree["posterior"].data_vars:
            tree["posterior"][v].attrs["units"] = u
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
        if src.sizes.get("source") != post.sizes.get("source"):
            raise ValueError(
                f"posterior has {post.sizes.get('source')} sources; the results have "
                f"{src.sizes.get('source')}"
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

