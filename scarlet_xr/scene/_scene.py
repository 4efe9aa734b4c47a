"""The user's Scene: a context manager that collects sources, fits and samples."""

from __future__ import annotations

import functools
import time

import jax.numpy as jnp
import numpy as np
import xarray as xr

from .._version import __version__
from ..core import LightCurve, SceneModel, Source, collecting, filter_jit, render_observations
from ..infer import FitHistory, newton_step
from ..infer import fit as _fit
from ..wcs import Frame
from ..xr import (
    BAND,
    BoundObservation,
    bind_observations,
    build_result_tree,
    check_same_observations,
    normalize_observations,
)
from ._host import host_products, render_on_host
from ._init import sky_positions_to_pixels

__all__ = ["Scene"]


@filter_jit
def _evaluate(model: SceneModel, likelihoods):
    """Everything the results need, in one compiled call (not op by op)."""
    centers = jnp.stack([src.center.value for src in model.sources])
    light = model.light_curves() if model.num_epochs else None
    return model.component_stamps(), model.fluxes(), render_observations(model, likelihoods), centers, light


@filter_jit
def _render(model: SceneModel):
    return model()


_LIGHT_CURVE_ROUNDS = 4
"""Optimizer runs of :meth:`Scene.fit`, each followed by an exact light-curve solve, at most."""


def _solve_light_curves(model: SceneModel, likelihoods):
    """Solve the free sign-free light curves exactly (they enter the model linearly), others fixed.

    Returns the model and the decrease of the loss (0 when there is nothing to solve).
    """
    where = tuple((k, c) for k, src in enumerate(model.sources) for c, comp in enumerate(src.components)
                  if isinstance(comp.spectrum, LightCurve) and not comp.spectrum.positive
                  and not comp.spectrum.values.fixed)
    if not where:
        return model, 0.0
    new, _, gain = newton_step(model, likelihoods, _light_curve_getter(where))
    return new, gain


@functools.cache
def _light_curve_getter(where):
    """``get(model)`` of the light curves at ``where``; one function per ``where``, so the
    compiled Newton step is reused across the rounds of a fit and across fits."""

    def get(m):
        return [m.sources[k].components[c].spectrum.values.raw for k, c in where]

    return get


class Scene:
    """A set of sources on a model frame.

    Sources created inside ``with Scene(frame) as scene:`` add themselves;
    ``with scene:`` adds more later. The active scene is held in a
    ``contextvars.ContextVar``: scenes built one after another or in
    different threads never see each other's sources.

    Parameters
    ----------
    frame : Frame
        The model frame.

    Examples
    --------
    >>> import numpy as np
    >>> from scarlet_xr import Scene, Frame, Source, GaussianMorphology
    >>> frame = Frame(["g", "r"], (21, 21))
    >>> with Scene(frame) as scene:
    ...     _ = Source((10, 10), np.array([1.0, 2.0]), GaussianMorphology(1.5))
    >>> len(scene.sources)
    1
    """

    def __init__(self, frame: Frame):
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a scarlet_xr.Frame; got {type(frame).__name__}")
        self.frame = frame
        self._sources: list[Source] = []
        self._contexts: list[collecting] = []
        self.history: FitHistory | None = None
        self.fit_time: float | None = None
        self.choices: list[dict] | None = None
        self.measured_flux: np.ndarray | None = None
        self.measured_flux_err: np.ndarray | None = None
        self.sky: dict[str, np.ndarray] | None = None
        self.sky_coefficients: dict[str, np.ndarray] | None = None
        self.sky_model: str | None = None
        self.observations: tuple[BoundObservation, ...] | None = None

    # -- building ---------------------------------------------------------
    def __enter__(self) -> Scene:
        ctx = collecting(self.add, to_pixel=self._sky_to_pixel)
        ctx.__enter__()
        self._contexts.append(ctx)
        return self

    def __exit__(self, *exc) -> bool:
        self._contexts.pop().__exit__(*exc)
        return False

    def _sky_to_pixel(self, position) -> np.ndarray:
        """Frame pixel ``(y, x)`` of one sky position: the hook a Source calls for a SkyCoord centre."""
        pix = sky_positions_to_pixels(self.frame, position)
        if pix is None:
            raise ValueError(
                f"a source centre must be (y, x) pixels or a SkyCoord; got {type(position).__name__}"
            )
        if len(pix) != 1:
            raise ValueError(f"a source centre is one position; got a SkyCoord of {len(pix)}")
        return pix[0]

    def add(self, source: Source) -> Source:
        """Add a source (done automatically for sources created inside ``with``)."""
        if not isinstance(source, Source):
            raise TypeError(f"expected a Source; got {type(source).__name__}")
        if source.num_bands != len(self.frame.bands):
            raise ValueError(
                f"source spectrum has {source.num_bands} bands; the frame has "
                f"{len(self.frame.bands)} ({', '.join(self.frame.bands)})"
            )
        if source.num_epochs and source.num_epochs != len(self.frame.epochs):
            raise ValueError(
                f"source light curve has {source.num_epochs} epochs; the frame has "
                f"{len(self.frame.epochs)} (its epochs come from the observations' epoch coordinate: "
                "build the frame with frame_from_observations, or Frame(..., epochs=...))"
            )
        self._sources.append(source)
        return source

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources, in the order they were added."""
        return tuple(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def model(self) -> SceneModel:
        """The pure-JAX model of this scene."""
        if not self._sources:
            raise ValueError("the scene has no sources")
        return SceneModel(self._sources, self.frame.cube_shape, psf=self.frame.psf,
                          num_epochs=len(self.frame.epochs))

    def render(self) -> np.ndarray:
        """Model cube ``(band, y, x)`` on the model frame (model PSF only); ``(epoch, band, y, x)``
        for a scene with variable sources."""
        return np.asarray(_render(self.model()))

    def _replace(self, model: SceneModel) -> Scene:
        new = Scene(self.frame)
        new._sources = list(model.sources)
        new.choices = self.choices  # measured fluxes belong to one fit and are not carried
        return new

    # -- inference ---------------------------------------------------------
    def fit(
        self,
        observations,
        *,
        max_steps: int = 1000,
        e_rel: float | None = None,
        optimizer=None,
        progress: bool = False,
        on_divergence: str = "warn",
    ) -> Scene:
        """Fit the scene to observations; return a new, fitted Scene.

        The input scene is left unchanged. The returned scene carries
        ``history`` (a :class:`~scarlet_xr.infer.FitHistory`) and ``fit_time``.
        Light curves of variable sources (:class:`~scarlet_xr.core.LightCurve`,
        sign-free) enter the model linearly: they are solved exactly
        (:func:`~scarlet_xr.infer.newton_step`) before the optimizer starts and
        again at its end, so their starting values do not matter.

        Parameters
        ----------
        observations : Dataset, sequence or mapping of Datasets
        max_steps, optimizer, progress, on_divergence
            See :func:`scarlet_xr.infer.fit`.
        e_rel : float, optional
            Relative loss change that stops the optimizer (see
            :func:`scarlet_xr.infer.fit`). Default 1e-4; 1e-6 for a scene with
            variable sources, whose light curves are differences between
            epochs and need the shapes beneath them settled (at 1e-4 a host's
            flux moved by up to 2 sigma with or without its supernova; at 1e-6
            by < 1 sigma).
        """
        if e_rel is None:
            e_rel = 1e-6 if any(s.num_epochs for s in self._sources) else 1e-4
        bound = bind_observations(observations, self.frame)
        liks = [b.likelihood for b in bound]
        t0 = time.perf_counter()
        model, _ = _solve_light_curves(self.model(), liks)
        losses, steps = [], 0
        for _ in range(_LIGHT_CURVE_ROUNDS):
            model, hist = _fit(
                model,
                liks,
                optimizer=optimizer,
                max_steps=max_steps - steps,
                e_rel=e_rel,
                progress=progress,
                on_divergence=on_divergence,
            )
            losses.append(np.asarray(hist.loss))
            steps += hist.num_steps
            model, gain = _solve_light_curves(model, liks)
            # the light curves moved: the shapes settle again with them (a loss gain of
            # 0.5 is one unit of chi^2)
            if gain < 0.5 or hist.status != "converged" or steps >= max_steps:
                break
        if len(losses) > 1:
            hist = FitHistory(loss=np.concatenate(losses), status=hist.status, num_steps=steps,
                              restored_step=hist.restored_step)
        new = self._replace(model)
        new.history = hist
        new.fit_time = time.perf_counter() - t0
        new.observations = bound
        return new

    def bound_observations(self, observations=None) -> tuple[BoundObservation, ...]:
        """The observations bound to this scene's frame (see :func:`~scarlet_xr.xr.bind_observations`).

        Parameters
        ----------
        observations : Dataset, sequence or mapping of Datasets, optional
            Default: the observations the scene was fitted to. Given, they are
            checked against those (same names, bands and shapes) and their bound
            likelihoods reused where the data are the same.

        Raises
        ------
        ValueError
            Without ``observations`` on a scene that was not fitted, or with
            observations other than the fitted ones.
        """
        if observations is None:
            if self.observations is None:
                raise ValueError("this scene was not fitted to observations (or was assembled from windows); "
                                 "pass the observations")
            return self.observations
        if self.observations is not None:
            return check_same_observations(self.observations, observations)
        return bind_observations(observations, self.frame)

    # -- results -----------------------------------------------------------
    def source_centers(self) -> np.ndarray:
        """Centres ``(source, 2)`` as ``(y, x)`` in model-frame pixels."""
        return np.stack([np.asarray(s.center.value, float) for s in self._sources])

    def fluxes(self) -> np.ndarray:
        """Total flux ``(source, band)``."""
        return np.asarray(self.model().fluxes(), float)

    def to_datatree(self, observations=None, *, extra_attrs: dict | None = None, zero_points=None,
                    measure: bool = True):
        """Results as an ``xarray.DataTree`` (layout in :mod:`scarlet_xr.xr`).

        ``/sources`` holds the catalog quantities of
        :func:`~scarlet_xr.scene.measure_scene` (``x``, ``y``, ``ra``, ``dec``
        are the fitted centre, or the light-weighted centroid for pixel models
        with a fixed anchor; ``centroid_y``, ``centroid_x`` the centroid of
        every model; ``anchor_y``, ``anchor_x`` the centre parameters) and ``/deblended/<observation>`` the
        flux-conserving per-source images, footprints and segmentation.

        Parameters
        ----------
        observations : Dataset, sequence or mapping of Datasets, optional
            The observations the scene was fit to. Default: those it keeps from
            its fit (:meth:`bound_observations`); given, they must be the same
            observations (names, bands, shapes), else a ``ValueError``.
        extra_attrs : dict, optional
            Added to the root attrs.
        zero_points : float, sequence or dict, optional
            AB zero points for magnitudes (default: from the observations'
            ``attrs['zero_point']``); see :func:`~scarlet_xr.scene.measure_scene`.
        measure : bool
            False skips the measurements and deblended images (model and
            residuals only).
        """
        bound = self.bound_observations(observations)
        obs = normalize_observations(bound)  # {name: Dataset}, checked when bound
        model = self.model()
        liks = tuple(b.likelihood for b in bound)
        renderers = tuple(b.renderer for b in bound)
        from ._measure import scene_stamps

        # static scenes: evaluated on the host (no program compiled for this scene's structure)
        host = host_products(model)
        rendered = None if host is None else render_on_host(host[2], liks, model.margin)
        if rendered is None:
            groups, fluxes, rendered, centers, light = _evaluate(model, liks)
            fluxes, centers = np.asarray(fluxes), np.asarray(centers)
            rendered = [np.asarray(r) for r in rendered]
        else:
            groups, fluxes = host[0], host[1].astype(np.float32)
            centers = np.stack([np.asarray(s.center.value, np.float32) for s in model.sources])
            light = None
        sky = self._sky_for(obs)
        if sky is not None:
            # the stored model includes the fitted sky (data - model is the residual); the
            # measurements and deblended images use the data less the sky
            rendered = [r + sky[name].astype(r.dtype) for r, name in zip(rendered, obs, strict=True)]
            obs_meas = {name: ds.assign(data=ds["data"] - sky[name]) for name, ds in obs.items()}
        else:
            obs_meas = obs
        stamps = scene_stamps(model, groups)
        obs_items = [(name, ds, r) for (name, ds), r in zip(obs.items(), rendered, strict=True)]
        attrs = dict(extra_attrs or {})
        if self.fit_time is not None:
            attrs["fit_time_s"] = float(self.fit_time)
        attrs.setdefault("sky", self.sky_model if self.sky is not None and self.sky_model else "none")
        tree = build_result_tree(
            self.frame,
            source_models=stamps,
            fluxes=fluxes,
            centers=centers,
            kinds=[s.kind for s in self._sources],
            names=[s.name or f"src{i}" for i, s in enumerate(self._sources)],
            observations=obs_items,
            history=self.history,
            version=__version__,
            extra_attrs=attrs,
        )
        src = tree["sources"].to_dataset()
        if self.measured_flux is not None:
            src["model_flux"] = src["flux"].copy()
            src["model_flux"].attrs["description"] = "flux of the model images per band"
        src["anchor_y"] = src["y"].copy()
        src["anchor_x"] = src["x"].copy()
        for v in ("anchor_y", "anchor_x"):
            src[v].attrs = {"units": "pix", "description": "centre parameter of the source model"}
        deblended = None
        if measure:
            from ._measure import measure_scene

            meas = measure_scene(self, obs_meas, zero_points=zero_points, stamps=stamps,
                                 model_flux=fluxes, renderers=renderers)
            for name, (dims, values, var_attrs) in meas.sources.items():
                src[name] = xr.Variable(dims, values, var_attrs)
            deblended = meas.deblended
        if self.frame.epochs:
            if "light_curve" not in src and any(s.num_epochs for s in self._sources):
                src["light_curve"] = xr.Variable(("source", "epoch", BAND), np.asarray(light, float), {
                    "description": "flux per epoch and band of the model (static sources: their flux)"})
            src = src.assign_coords(epoch=("epoch", list(self.frame.epochs)))
        if self.choices is not None:
            src = src.assign(
                kind=("source", [str(c["kind"]) for c in self.choices], src["kind"].attrs),
                kind_reason=("source", [str(c["reason"]) for c in self.choices]),
                delta_chi2_point=("source", [float(c["delta_chi2_point"]) for c in self.choices]),
                box_truncated=("source", [bool(c["box_truncated"]) for c in self.choices]),
                added=("source", [bool(c.get("added", False)) for c in self.choices], {
                    "description": "not among the given positions: added at a significant peak of the "
                                   "fit's residual (see scarlet_xr.scene.fit_sources, find_missing)"}),
            )
        tree["sources"] = src
        if sky is not None:
            for name in obs:
                node = tree[f"observations/{name}"].to_dataset()
                node["sky"] = xr.DataArray(sky[name].astype(node["data"].dtype), dims=node["data"].dims,
                                           coords=node["data"].coords,
                                           attrs={"description": "background fitted with the model "
                                                                 "(included in model)"})
                node["sky_coefficients"] = xr.DataArray(
                    self.sky_coefficients[name], dims=(BAND, "sky_term"),
                    coords={BAND: node[BAND].values},
                    attrs={"description": "sky level per band (then the change across the image "
                                          "height and width, for a plane)"})
                tree[f"observations/{name}"] = xr.DataTree(node)
        if deblended is not None:
            tree["deblended"] = xr.DataTree(children={k: xr.DataTree(v) for k, v in deblended.items()})
        return tree

    def _sky_for(self, obs) -> dict | None:
        """The fitted sky images of the observations ``obs`` (by name), or None without a sky."""
        if self.sky is None:
            return None
        missing = [name for name in obs if name not in self.sky]
        if missing:
            raise ValueError(f"no fitted sky for observation(s) {missing}; the scene's sky was fitted "
                             f"to {sorted(self.sky)}")
        for name, ds in obs.items():
            if self.sky[name].shape != ds["data"].shape:
                raise ValueError(f"observation {name!r}: data shape {ds['data'].shape} does not match "
                                 f"its fitted sky {self.sky[name].shape}")
        return self.sky

    def __repr__(self) -> str:
        kinds = ", ".join(s.kind for s in self._sources)
        return f"Scene({len(self._sources)} sources [{kinds}], {self.frame!r})"

    def sample(self, observations=None, **kwargs):
        """Sample the posterior of this scene; see :func:`scarlet_xr.scene.sample_scene`.

        ``observations`` default to those the scene was fitted to.

        Returns
        -------
        xarray.DataTree
            ArviZ groups ``posterior`` and ``sample_stats``.
        """
        from ._sample import sample_scene

        return sample_scene(self, observations, **kwargs)
