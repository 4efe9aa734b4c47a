"""The default deblending path: a model per source chosen from the data.

``fit_sources`` is what the CLI, the accessor and :func:`fit_observations` run
when sources have ``kind="auto"`` (the default):

1. every ``auto`` source starts as an elliptical Sersic profile (its size from
   the PSF-corrected second moments of the detection image; a weak normal prior,
   :data:`SERSIC_INDEX_PRIOR`, on its index) and the scene is fitted jointly;
2. the spectra are re-solved exactly by linear least squares with the shapes
   fixed, and for each source the χ² of the scene with that source replaced by
   a point source (same centre, fluxes re-solved) is compared with the Sersic
   one: the source becomes a point unless the Sersic lowers χ² by more than
   its number of extra shape parameters (:data:`EXTENT_PARAMETERS`, the mean
   drop from noise alone). Losing an extended galaxy's wings costs far more
   flux than fitting a star with a compact Sersic, so ties go to "extended";
3. point sources become :class:`~scarlet_xr.core.PointSourceMorphology`;
   extended sources bright enough to show a colour gradient (S/N >
   :data:`BULGE_DISK_SNR`) become a bulge (de Vaucouleurs, n = 4) plus a disk
   (exponential, n = 1) with their own spectra, sharing the centre;
   each extended source's box (one of the canonical sizes; sources of one
   type and size render in one vmapped call, so a scene compiles once per
   type and size used, whatever its number of sources) is grown if it now
   needs more than ``BOX_RADII_RE`` half-light radii, the scene is refitted
   with the chosen models, and the spectra are solved linearly once more. A
   source whose fitted size still outgrows its box is flagged
   ``box_truncated``;
4. bright sources (S/N > :data:`MISFIT_SNR`) that a smooth profile does not fit
   (footprint reduced χ² > :data:`MISFIT_CHI2`, e.g. real spirals) become
   free-form pixels and the scene is refitted once more.

Choices and their reasons are kept per source (``Scene.choices``) and written
to ``/sources`` (``kind_reason``, ``delta_chi2_point``, ``box_truncated``).
"""

from __future__ import annotations

import logging
import math
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..core import (
    Component,
    FreeFormMorphology,
    GaussianLikelihood,
    MonotonicMorphology,
    NormalPrior,
    Parameter,
    PointSourceMorphology,
    Positive,
    SersicMorphology,
    Source,
    Spectrum,
    filter_jit,
    morphology_image,
    render_observations,
)
from ..infer import (
    FitHistory,
    bound_compiled_programs,
    default_optimizer,
    plateau_optimizer,
    refinable,
    refine,
    settling_optimizer,
)
from ..infer import fit as _fit
from ..wcs import Frame
from ..xr import bind_observations, normalize_observations
from ._boxes import consolidated_boxes
from ._init import (
    BOX_SIZES,
    BULGE_DISK_SPLIT,
    KINDS,
    _canonical,
    _np_convolve,
    _np_shift,
    _observed_psf_variance,
    _stamp,
    frame_margin,
    bulge_disk_morphologies,
    detection_image,
    initialize_sources,
    sky_positions_to_pixels,
)
from ._linear import set_spectra, solve_linear
from ._local import local_problem, merged
from ._missing import MISSING_MAX, MISSING_MAX_SOURCES, missing_sources
from ._scene import Scene
from ._window import check_fit_memory, on_frame_grid, plan_windows, window_frame, window_observations

__all__ = ["fit_sources", "EXTENT_PARAMETERS", "BULGE_DISK_SNR", "BULGE_DISK_MIN_N", "SERSIC_INDEX_PRIOR",
           "ONE_BOX_PIXELS"]

logger = logging.getLogger("scarlet_xr")

REFINE_RADIUS = 2.0
"""Largest move (model pixels) of a given position onto the peak of the data."""

KIND_ALIASES = {"star": "point", "galaxy": "sersic", "freeform": "free", "": "auto", "bd": "bulge+disk",
                "bulge_disk": "bulge+disk"}
"""Catalog spellings accepted for kinds (e.g. a truth table's ``star``/``galaxy``, a
results table's ``freeform``)."""

EXTENT_PARAMETERS = 4
"""Extra shape parameters of a Sersic over a point source (n, r_e, e1, e2): a
source is a point unless the Sersic lowers chi^2 by more than this (the drop
that noise alone gives on average)."""

BOX_RADII_RE = 5.0
"""Extended-source boxes hold this many half-light radii (plus the PSF) after the first fit."""

DEFAULT_E_REL = 1e-6
"""Default stopping rule of the default path's fits: the loss changed by less than this (relative,
per step, averaged over the last steps; see :func:`scarlet_xr.infer.fit`). 1e-5 takes 21-40 % fewer
steps for the same fluxes (``make_scenes.py`` seeds 6262, 4242, 8080, 12 scenes each; a 300-source
cutout) but not the same shapes: the ellipticity error of an isolated S/N 82 galaxy grew from 0.056
to 0.078 (tests/test_catalog.py), and a single scene's wall time hardly changed (128.4 vs 128.7 s for
12 scenes: compiling, not steps). Survey blends use :data:`scarlet_xr.survey.SURVEY_E_REL`."""

CANONICAL_FRAME_BOX_STAMP = 64
"""Canonical fits (survey blends) on frames up to this side give every extended source the
frame's largest box (one compiled layout per mix of kinds); larger frames start from the
largest box inside the frame (see ``fit_sources``)."""

_STAGE1_STEPS = 300
_STAGE1_E_REL = 1e-5  # the first fit only has to tell points from extended sources

BULGE_DISK_SNR = 50.0
"""S/N (all bands) above which an extended ``auto`` source becomes bulge + disk.

Real galaxies are redder in the centre than in the outskirts: one profile with
one spectrum then mis-measures the band fluxes by 5-15% at high S/N (measured on
``make_scenes.py`` scenes: median error 0.07 above S/N 150, ten times the noise
floor; 0.02 as bulge + disk). Below this S/N the extra component is poorly
constrained and moves light between neighbours, so one Sersic stays."""

BULGE_DISK_MIN_N = 0.8
"""Sersic index below which an extended source stays one Sersic at any S/N.

A de Vaucouleurs bulge plus an exponential disk (positive fluxes) is at least
as peaked as the disk: it cannot make a profile flatter than exponential.
Measured on GalSim Gaussian galaxies (n = 0.5) at S/N 157: as bulge + disk the
band fluxes came out 6-15 % too high (the bulge's wings; chi^2 120-160 above
the one-Sersic fit's), as one Sersic within 2 %. In the ``make_scenes.py``
population (bulge + disk galaxies) every source made bulge + disk had a
first-fit index of 1.16 or more (seed 555, 16 scenes)."""

SERSIC_INDEX_PRIOR = (1.5, 2.0)
"""Mean and width of the normal prior on the index of ``auto`` sources' Sersic profiles.

Where the data constrain the index (bright, isolated sources) it moves a fit by a
fraction of its error; where they do not (faint sources overlapping brighter
ones), a free index trades wings with the neighbours. Every default-path fit of
the ``make_scenes.py`` scenes below already reaches a chi^2 below that of the
true noiseless scene (by 8-93), so the flux errors left are directions the data
leave open, not optimisation. Measured on four seeds (6262, 4242, 8080: 12 scenes
each; 3131: 16), 219 sources, median |flux/truth - 1| of galaxies (noise floor
0.034): no prior 0.0795, width 1.0 0.0690, width 2.0 0.0705; all sources 0.065 ->
0.058 (floor 0.031); > 50 % off 10.2 -> 9.2 %. Width 2 rather than 1: an isolated
S/N 43 galaxy with a large bulge lost 10 % of its flux with width 1 (6 % with 2, 3 %
without); the index of real galaxies is 0.5-4 or more."""

MISFIT_CHI2 = 1.5
"""Footprint reduced chi^2 above which a bright Sersic source becomes free-form."""

MISFIT_SNR = 50.0
"""Minimum S/N (all bands) for the free-form switch: below it a smooth profile is the safer model."""

SERSIC_OVERSAMPLE = 2
"""Sub-pixel samples per axis of ``auto`` Sersic profiles outside their finely sampled centre."""

INIT_SIZE_MARGIN = 2.0
"""Initial boxes hold ``BOX_RADII_RE`` times this many initial half-light radii."""

INIT_SIZE_MARGIN_OWN = 1.5
""":data:`INIT_SIZE_MARGIN` of crowded scenes, where each extended source starts in a box of its own
(see :data:`ONE_BOX_PIXELS`): their first fit's profiles are most of its cost."""

ONE_BOX_PIXELS = 150_000
"""A scene's extended ``auto`` sources share one box (the largest any of them needs) while
their number times that box's area is at most this many pixels; above it each gets the box
its own size needs.

Every box size is a stack of its own in the compiled step, and compiling, not stepping, is
most of a small scene's time: on a 300 x 300 cutout with 10 sources the fit took 28.9 s,
13.4 s of it compiling five fit programs, and 18.4-21.3 s (5.6-6.1 s compiling) with one box. On the
``make_scenes.py`` scenes (seeds 6262, 4242, 8080: 12 scenes each, 3131: 16; cache cold)
the default path took 84-112 s per seed instead of 140-164 s, galaxy flux errors 0.0574 /
0.0664 / 0.1119 / 0.0643 instead of 0.0558 / 0.0682 / 0.1161 / 0.0581 (splits moving
between nearby optima). A pixel of box costs about 32 ns per step (a stack of 130 Sersic
profiles in 59 px boxes, value and gradient), and a stack about a second of compiling per
fit program: 150 000 pixels (e.g. the 10 sources above, in 121 px boxes) cost 5 ms per step,
a second or two over a fit; a 300-source cutout keeps its own boxes."""

LOCAL_CHI2_COMPONENTS = 64
"""Above this many components, a source's chi^2 as a point re-solves only the spectra coupled
to it (the rest held at the scene's solution) instead of the whole scene's."""

FITTED_BOX_MARGIN = 1.0
"""After the first fit, boxes hold ``BOX_RADII_RE`` times this many fitted half-light radii."""

LOCAL_COUPLING = 1e-5
"""Normalised overlap ``|a_ij| / sqrt(a_ii a_jj)`` (largest over bands) above which two components
are re-solved together in a crowded scene's point-source test; weaker ones stay at the scene's
solution. On a 300-source cutout (425 components) any overlap at all coupled a median 187
components to each source (8.2 s for the test); with 1e-5, 29 (0.7 s), every choice the same and
the chi^2 differences within 2 % (median 0.007)."""

COMPACT_RE = 0.75
"""Half-light radius, in units of the observed PSF's core width (sigma), below which an
extended choice is checked by refitting the source as a point (see ``point_refit``)."""

POINT_REFIT_MAX_SOURCES = 10
"""Most sources in a scene (or a window of a large one) for the point refit (``point_refit``):
it fits the whole scene again, which a crowded 300-source cutout paid with 167 s and 0.55 GB."""

CENTER_SIGMA = 0.75
"""Prior width (model pixels) on the centres of ``auto`` sources while fitting."""

FREE_STEP = 0.03
"""Natural step of free-form pixels (peak 1) in the morphology-prior stage."""

MISSING_PASSES = 1
"""Searches for missed sources (``find_missing``): each adds sources and fits the scene again."""

CENTER_LIMIT = 1.5
"""Centres of ``auto`` sources stay within this many model pixels of the given position."""

ADDED_CENTER_SCALE = 2.0
"""Centre prior width (and wall) of a source added at a residual peak, and of the given source
nearest to it, relative to the others' (see ``center_sigma`` in :func:`fit_sources`)."""


def _point_stamps(frame: Frame, centers) -> list:
    """Point-source templates (model PSF at each sub-pixel centre) as stamps on the frame."""
    out = []
    for c in centers:
        iy, ix = round(float(c[0])), round(float(c[1]))
        img = _np_shift(np.asarray(frame.psf, float), (float(c[0]) - iy, float(c[1]) - ix))
        out.append(_stamp(frame.shape, c, img, frame_margin(frame)))
    return out


def _delta_chi2_point(model, liks, frame, auto_idx, comp_of_source):
    """χ²(source k as a point) - χ²(as fitted) per source in ``auto_idx``, spectra re-solved."""
    from ._linear import _component_stamps, _normal_equations, _solve_band

    stamps = _component_stamps(model, frame.psf)
    centers = np.stack([np.asarray(s.center.value, float) for s in model.sources])
    pts = _point_stamps(frame, centers[auto_idx])
    nb = model.shape[0]
    a, rhs, dd = _normal_equations(stamps + pts, liks, model.shape)
    nc = len(stamps)

    def chi2(sel):
        tot = 0.0
        for b in range(nb):
            aa, rr = a[b][np.ix_(sel, sel)], rhs[b][sel]
            x, _ = _solve_band(aa, rr)
            tot += dd[b] - 2 * x @ rr + x @ aa @ x
        return tot

    base = list(range(nc))
    out = {}
    if nc <= LOCAL_CHI2_COMPONENTS:
        ref = chi2(base)
        for j, k in enumerate(auto_idx):
            sel = [c for c in base if c not in comp_of_source[k]] + [nc + j]
            out[k] = chi2(sel) - ref
        return out
    # many components: each swap re-solves only the components coupled to the source or its point,
    # the others held at the whole scene's solution (solving all of them per source costs n^4)
    xs = [_solve_band(a[b][:nc, :nc], rhs[b][:nc])[0] for b in range(nb)]
    # coupled: templates whose normalised overlap exceeds LOCAL_COUPLING in some band (through the
    # PSF's far wings nearly every pair of a crowded cutout overlaps a little)
    diag = np.sqrt(np.maximum(np.diagonal(a, axis1=1, axis2=2).max(axis=0), 1e-300))
    coupled = np.abs(a).max(axis=0) > LOCAL_COUPLING * np.outer(diag, diag)

    def local_chi2(b, sel, held):
        r = rhs[b][sel] - a[b][np.ix_(sel, held)] @ xs[b][held]
        aa = a[b][np.ix_(sel, sel)]
        y, _ = _solve_band(aa, r)
        return -2 * y @ r + y @ aa @ y

    for j, k in enumerate(auto_idx):
        own = list(comp_of_source[k])
        near = np.flatnonzero((coupled[own].any(axis=0) | coupled[nc + j])[:nc])
        held = np.setdiff1d(np.arange(nc), near)
        swap = [c for c in near if c not in own] + [nc + j]
        out[k] = sum(local_chi2(b, swap, held) - local_chi2(b, list(near), held) for b in range(nb))
    return out


def fit_sources(
    frame: Frame,
    observations,
    centers,
    *,
    kinds="auto",
    names=None,
    max_steps: int = 1000,
    e_rel: float = DEFAULT_E_REL,
    optimizer=None,
    progress: bool = False,
    max_box: int = BOX_SIZES[-4],
    center_sigma=CENTER_SIGMA,
    sky: str | None = None,
    windows="auto",
    canonical: bool = False,
    prior=None,
    refine_fit: bool = True,
    point_refit: bool = True,
    find_missing: bool = False,
    pixel_steps: int | None = None,
    misfit_pixels: bool = True,
) -> Scene:
    """Initialise, choose models for and fit sources at ``centers``; return the fitted Scene.

    Sources of kind ``"auto"`` get the model their data support (point source
    or Sersic, see the module docstring); other kinds (see
    :func:`scarlet_xr.initialize_sources`) are used as given. After the
    fit the spectra are the exact linear least-squares solution given the
    fitted shapes.

    Parameters
    ----------
    frame : Frame
    observations : Dataset, sequence or mapping of Datasets
    centers : array (n, 2) or SkyCoord
        ``(y, x)`` in model-frame pixels, or sky positions (a ``SkyCoord`` of
        any celestial frame, or a list of them; the frame's WCS converts).
    kinds : str or sequence of str
        ``"auto"`` (default) or a fixed kind per source (see
        :func:`scarlet_xr.initialize_sources`; aliases in :data:`KIND_ALIASES`).
    names : sequence of str, optional
    max_steps, e_rel, optimizer, progress
        See :func:`scarlet_xr.infer.fit` (``max_steps`` bounds each stage;
        default ``e_rel`` :data:`DEFAULT_E_REL`). Default optimizer:
        :func:`~scarlet_xr.infer.settling_optimizer` while shapes are parametric,
        :func:`~scarlet_xr.infer.default_optimizer` once free-form pixels are in
        the scene.
    max_box : int
        Largest box an extended source may grow to; a source that needs more
        is flagged ``box_truncated``.
    center_sigma : float or array (n,)
        Width (model pixels) of the normal prior that keeps each ``auto``
        source's centre near its given position during the fit (so that
        neighbours cannot swap identities), walled at :data:`CENTER_LIMIT`
        (or, for a wider prior, at the same multiple of its width); one value
        for all sources or one per source; dropped from the returned scene.
        Sources added at residual peaks (``find_missing``) and the given
        source nearest to each get :data:`ADDED_CENTER_SCALE` times their width.
    sky : {None, "constant", "plane"}
        Fit a background per band and observation with the sources (a level,
        or a level and a gradient; either sign), for images whose background
        was not subtracted (or was subtracted badly). Default None: the
        images are background-subtracted. The linear flux solve and the
        measurements use the data less the fitted sky.
    windows : {"auto", True, False}
        Fit far-apart groups of sources on their own windows of the image
        (see :mod:`scarlet_xr.scene._window`): sources whose largest boxes
        (``max_box``) cannot overlap do not interact, and each group is
        fitted on a cutout around it, at a cost set by the cutouts instead of
        the frame. ``"auto"`` (default) does so for frames of at least
        :data:`~scarlet_xr.scene._window.WINDOW_MIN_PIXELS` pixels whose
        windows cover at most half of them, when all sources are ``auto`` or
        ``point``, the observations are on the frame's pixel grid, there is
        no ``sky`` and no epochs; True whenever those conditions allow; False
        never. The returned scene is on the whole frame either way.
    canonical : bool
        Fit in a layout that does not depend on the scene's content, for
        many small scenes of one frame shape (a survey's blends padded to a
        canonical stamp): all extended ``auto`` sources share one box, the
        largest canonical size inside the frame (or ``max_box`` when a
        source needs more, at the start or after the first fit), and each
        stage is fitted in the scene's canonical layout (``fit(...,
        canonical=True)``), so that scenes whose sources fall in the same
        buckets share compiled programs. Default False: the scene's own
        layout, in which the extended ``auto`` sources share one box (the
        largest any of them needs) while their number times its area is at
        most :data:`ONE_BOX_PIXELS` (fewer programs to compile), else each
        gets the box its size needs.
    prior : object, optional
        Morphology prior for a last stage in pixels (any prior a
        :class:`~scarlet_xr.core.Parameter` accepts, e.g.
        :func:`scarlet_xr.nn.learned_prior`): after the model choice and fits
        above, every extended ``auto`` source becomes free-form pixels
        (:class:`~scarlet_xr.core.FreeFormMorphology`) started from its fitted
        model, with this prior on its image, and the scene is refitted; point
        sources stay points. Sources given as ``"free"`` get the prior too.
        Default None: no pixel stage (see ``docs/default_path.md`` for what
        the learned prior does to fluxes).
    refine_fit : bool
        After the last stage, take Levenberg-Marquardt steps to the optimum
        (:func:`scarlet_xr.infer.refine`; not for canonical survey layouts).
        Default True. On ``make_scenes.py`` blends galaxy flux errors fell
        from 2.18x to 1.88x the noise floor (seed 3141) and from 2.46x to
        2.35x (seed 555); it doubled the time per scene compiled afresh
        (median 5.5 -> 11.3 s, mostly compiling; seed 4242). False keeps
        the fit where the optimizer stopped.
    point_refit : bool
        The point-or-extended test compares the first fit's Sersic with a
        point source while the neighbours keep the shapes they took beside
        the Sersic, which favours extent where a compact source is blended
        (a star next to a galaxy took 27-40 % of the galaxy's light as a
        Sersic with r_e 0.7 px). With True (default), ``auto`` sources chosen
        extended whose first-fit half-light radius is below
        :data:`COMPACT_RE` times the observed PSF's width are refitted as
        points with the whole scene, and the points are kept when chi^2
        does not rise (they fit as well with :data:`EXTENT_PARAMETERS`
        fewer parameters each). Costs a second fit where such sources
        exist; scenes (or windows) of more than
        :data:`POINT_REFIT_MAX_SOURCES` sources skip it.
    find_missing : bool or int
        Look for sources the positions missed (see
        :mod:`scarlet_xr.scene._missing`): after the first fit, significant
        peaks of the residual away from every source become new ``auto``
        sources and the scene is fitted again from the start, up to
        :data:`MISSING_PASSES` times (an int: that many) and up to
        :data:`~scarlet_xr.scene._missing.MISSING_MAX_SOURCES` sources in
        all. Added sources come after the given ones, named ``added<k>``,
        with ``choices[k]["added"]`` True (``added`` in ``/sources``, flag
        ``ADDED`` in catalogs). Default False: the given positions are the
        catalog (a user's list stays one-to-one); the paths that detect the
        sources themselves (a whole field, :func:`~scarlet_xr.fit_observations`
        without positions, the CLI without ``--sources``) turn it on. On the
        20 blends of the field benchmark that a smooth model fitted worst
        (2048 px, seed 2027) it matched 13 more true sources (59 instead of
        46) and their median flux error fell from 0.20 to 0.12.
    misfit_pixels : bool
        Bright extended ``auto`` sources whose smooth model leaves a reduced
        chi^2 above ``MISFIT_CHI2`` on their footprint become monotonic pixels
        (step 7 of ``docs/default_path.md``). Default True (real galaxies' arms
        and clumps: the HSC COSMOS cutout reaches reduced chi^2 1.14 with them,
        2.16 without); False keeps every source parametric (faster where the
        misfits are merged sources, see
        :data:`scarlet_xr.survey._task.SURVEY_MISFIT_PIXELS`).
    pixel_steps : int, optional
        Most steps of the stages with pixel models (monotonic misfits, the
        learned prior); default ``max_steps``. Survey blends use 300
        (:func:`scarlet_xr.survey.fit_blend_auto`).

    Returns
    -------
    Scene
        Fitted; ``scene.choices`` lists per source ``kind``, ``reason``,
        ``delta_chi2_point`` and ``box_truncated``; with ``sky``,
        ``scene.sky`` maps each observation's name to its fitted sky image
        ``(band, y, x)`` and ``scene.sky_coefficients`` to ``(band, k)``.

    Notes
    -----
    A process that has compiled many programs (hundreds of different scenes in
    one session) drops them when this fit starts if it nears the kernel's cap
    on memory areas (:func:`scarlet_xr.infer.bound_compiled_programs`), rather
    than abort later inside the compiler; they are compiled again when needed.
    """
    bound_compiled_programs()  # a long session's compiled programs near the kernel's cap: dropped
    obs = normalize_observations(observations)
    from_sky = sky_positions_to_pixels(frame, centers)
    centers = np.atleast_2d(np.asarray(centers if from_sky is None else from_sky, float))
    n = len(centers)
    center_sigma = _center_widths(center_sigma, n)
    kinds = [kinds] * n if isinstance(kinds, str) else list(kinds)
    if len(kinds) != n:
        raise ValueError(f"expected {n} kinds; got {len(kinds)}")
    kinds = [KIND_ALIASES.get(str(k).strip().lower(), str(k).strip().lower()) for k in kinds]
    unknown = sorted({k for k in kinds if k != "auto" and k not in KINDS})
    if unknown:
        raise ValueError(
            f"unknown source kind(s) {unknown}; expected 'auto', one of {KINDS} or an alias "
            f"{sorted(KIND_ALIASES)}"
        )
    if isinstance(prior, str):
        raise ValueError(f"prior must be a prior object (e.g. scarlet_xr.nn.learned_prior()) or None; "
                         f"got the string {prior!r}")
    auto_idx = [i for i, k in enumerate(kinds) if k == "auto"]
    max_box = min(max_box, _canonical(max(frame.shape)))
    if windows is not False and sky is None and not frame.epochs and on_frame_grid(obs, frame) and (
            windows is True or all(k in ("auto", "point") for k in kinds)):
        plan = plan_windows(frame.shape, centers, max_box, windows=windows, num_bands=len(frame.bands))
        if plan is not None:
            return _fit_windows(frame, obs, centers, kinds, names, plan, max_steps=max_steps, e_rel=e_rel,
                                optimizer=optimizer, progress=progress, max_box=max_box,
                                center_sigma=center_sigma, prior=prior, refine_fit=refine_fit,
                                point_refit=point_refit, find_missing=find_missing,
                                pixel_steps=pixel_steps, misfit_pixels=misfit_pixels)
    else:
        plan_windows(frame.shape, centers, max_box, windows=windows)  # validates the argument
    check_fit_memory(obs, frame)
    init_kinds = ["sersic" if k == "auto" else k for k in kinds]
    # bound once: every stage below, the results, measurements and samples use these
    bound = bind_observations(obs, frame, sky=sky)
    fit_liks = [b.likelihood for b in bound]
    liks = fit_liks
    t0 = time.perf_counter()
    detection = detection_image(bound, frame)  # once, for the positions and the initial sources
    given = centers.copy()
    centers, moved = refine_centers(frame, bound, centers, detection=detection)
    with Scene(frame) as scene:
        initialize_sources(frame, bound, centers, kinds=init_kinds, names=names, detection=detection)
    sources = list(scene.sources)
    choices = [
        {"kind": k, "reason": "given", "delta_chi2_point": float("nan"), "box_truncated": False}
        for k in kinds
    ]
    for i, d in moved.items():
        choices[i]["reason"] += f"; position moved {d:.2f} px to the peak of the data"
    # each auto source gets the canonical box its size needs: sources of one box size
    # render in one vmapped call, so a scene compiles once per box size used (a few),
    # whatever its number of sources, and memory grows with the boxes, not the largest one
    # (moments inside the footprint underestimate sizes: start with room for twice the size)
    # (and never more than the frame holds: light outside it is not measured: max_box above)
    # (canonical: one box for all, so that the layout depends on the scene's counts, kinds
    # and frame only. On small frames the frame's max_box: with the largest box inside the
    # frame, grown to max_box when a source needed more, a stamp size had two layouts per
    # mix of kinds, and on 60 blends of a 1024 px field 254 programs compiled instead of 206,
    # the fits took 106 s, not 84 s, fluxes the same to 1e-6 in the median. On larger frames
    # steps cost more than compiles: there max_box (121 px for a 96 px stamp) made two
    # 96 px blends take 12.7 and 12.2 s instead of 9.7 and 9.1 s: the largest box inside)
    # (a scene's own layout: one box for all while that costs few pixels, see ONE_BOX_PIXELS)
    common = None
    one_box = False
    if not canonical and auto_idx:
        box0 = _common_box([sources[k].components[0].morphology for k in auto_idx], max_box,
                           scale=INIT_SIZE_MARGIN)
        one_box = len(auto_idx) * box0**2 <= ONE_BOX_PIXELS
        common = box0 if one_box else None
        logger.debug("%d auto sources: %s", len(auto_idx), f"one {box0} px box for all" if one_box
                     else f"own boxes ({box0} px for all is too many pixels)")
    elif canonical and max(frame.shape) <= CANONICAL_FRAME_BOX_STAMP:
        common = max_box
    elif canonical:
        inside = min(max([b for b in BOX_SIZES if b <= max(frame.shape)] or [max_box]), max_box)
        needed = _common_box([sources[k].components[0].morphology for k in auto_idx], max_box)
        common = inside if needed <= inside else max_box
    for k in auto_idx:
        src = sources[k]
        box = common or _common_box([src.components[0].morphology], max_box, scale=INIT_SIZE_MARGIN_OWN)
        morph = _with_index_prior(_resized(src.components[0].morphology, box))
        c = np.asarray(src.center.value, float)
        sig = float(center_sigma[k])
        wall = max(CENTER_LIMIT, CENTER_LIMIT / CENTER_SIGMA * sig)
        center = Parameter(c, step=src.center.step, prior=NormalPrior(c, sig, wall))
        sources[k] = Source(center, src.components[0].spectrum, morph, name=src.name)
    model = type(scene.model())(sources, frame.cube_shape, psf=frame.psf)
    losses, steps = [], 0

    def search(fitted_model, fitted_liks, hist_loss):
        """The scene fitted again with sources at the residual's significant peaks, or None."""
        now = np.stack([np.asarray(s.center.value, float) for s in fitted_model.sources])
        width = math.sqrt(_observed_psf_variance(obs, frame))
        new, new_snr = missing_sources(fitted_model, fitted_liks, now, width,
                                       max_new=min(MISSING_MAX, MISSING_MAX_SOURCES - n))
        if not len(new):
            return None
        return _with_missing(frame, obs, given, kinds, names, new, new_snr, now, hist_loss=hist_loss,
                             passes=MISSING_PASSES if find_missing is True else int(find_missing),
                             max_steps=max_steps, e_rel=e_rel, optimizer=optimizer, progress=progress,
                             max_box=max_box, center_sigma=center_sigma, sky=sky, canonical=canonical,
                             prior=prior, refine_fit=refine_fit, point_refit=point_refit,
                             pixel_steps=pixel_steps, misfit_pixels=misfit_pixels)

    # (small stacks of profiles moved up to the next box size used: fewer programs to compile)
    boxes = (lambda m: m) if canonical else consolidated_boxes
    # (canonical: every fit's layout also holds a point, a Sersic and a bulge + disk, see
    # _layout_templates: blends of one stamp size and count then share their programs)
    base = model.sources[auto_idx[0]] if canonical and auto_idx else None
    made = {}

    def templates(m):
        return _layout_templates(base, m, frame, made) if canonical else ()

    if auto_idx:
        model = boxes(model)
        model, hist = _fit(model, fit_liks, optimizer=_optimizer_for(model, optimizer),
                           max_steps=min(_STAGE1_STEPS, max_steps), e_rel=max(e_rel, _STAGE1_E_REL),
                           progress=progress, canonical=canonical, templates=templates(model))
        losses.append(hist.loss)
        steps += hist.num_steps
        liks = _without_sky(fit_liks, model)
        # (searched here, not after the fit with the chosen models: that fit absorbs part of the
        # missed sources and is paid twice; see docs/default_path.md)
        if find_missing and n < MISSING_MAX_SOURCES:
            solved = set_spectra(model, solve_linear(model, liks, frame.psf).amplitudes)
            again = search(solved, liks, hist.loss)
            if again is not None:
                return again
        model = _choose(model, liks, frame, auto_idx, choices)
        budget = None if canonical else ONE_BOX_PIXELS
        model = _grow_boxes(model, auto_idx, choices, max_box, frame.psf, common=canonical or one_box,
                            budget=budget)
        model, one_sersic = _bulge_disk(model, liks, frame, auto_idx, choices, max_box,
                                        common=canonical or one_box, budget=budget)
    else:
        one_sersic = {}
    model = boxes(model)
    # Where the Levenberg-Marquardt steps at the end cannot run (a Jacobian too large: crowded
    # scenes on large frames) the fits themselves must reach the optimum, and Adam with a
    # rate halved every 100 steps stops short of it there: on a 300-source cutout its 600-step
    # loss was 700 above what a rate halved on plateaus reached in 600 steps (and reached in
    # about 170). Measured on five crowded cutouts (300, 150, 60, 30, 10 sources; truth tables;
    # benchmarks/README.md): fit 78.5 / 46.6 / 20.3 / 21.1 / 19.8 -> 61.6 / 40.3 / 21.2 / 22.5 /
    # 16.2 s, galaxies' median flux errors 0.0488 / 0.0438 / 0.0404 / 0.0376 / 0.0369 -> 0.0518 /
    # 0.0411 / 0.0331 / 0.0382 / 0.0322. The first fit keeps the fixed halving (the
    # point-or-extended choices follow from it: deeper, it called 12 of the 300-source cutout's
    # 49 stars extended); refined scenes (small blends) keep it too (dev seeds: galaxies within
    # the splits' noise, 0.0750 -> 0.0776 mean).
    # (``refine_fit=False`` keeps the plain path: Adam's trajectory, where it stopped)
    deep = not canonical and bool(refine_fit) and not refinable(model, fit_liks)
    model, hist = _fit(model, fit_liks, optimizer=_optimizer_for(model, optimizer, deep),
                       max_steps=max_steps,
                       e_rel=e_rel, progress=progress, canonical=canonical, templates=templates(model))
    losses.append(hist.loss)
    steps += hist.num_steps
    liks = _without_sky(fit_liks, model)
    _flag_truncated(model, auto_idx, choices, max_box)
    sol = solve_linear(model, liks, frame.psf)
    model = set_spectra(model, sol.amplitudes)
    # later stages with pixel models: bright misfits, then (with a prior) every extended source
    upgrades = [lambda m: _free_form_misfits(m, liks, frame, auto_idx, choices, centers, one_sersic,
                                             pixels=misfit_pixels, fit_box=one_box)]
    if prior is not None:
        upgrades.append(lambda m: _with_pixel_prior(m, frame, auto_idx, choices, centers, prior,
                                                      fit_box=one_box))
    stage_steps = max_steps if pixel_steps is None else min(max_steps, int(pixel_steps))
    for upgrade in upgrades:
        upgraded = upgrade(model)
        if upgraded is None:
            continue
        upgraded, changed = upgraded if isinstance(upgraded, tuple) else (upgraded, None)
        # a few changed sources of a large scene: refit their neighbourhood alone
        local = (None if canonical or changed is None
                 else local_problem(upgraded, changed, fit_liks, frame.psf))
        if local is not None:
            idx, sub, sub_liks = local
            sub = boxes(sub)
            sub, hist = _fit(sub, sub_liks, optimizer=_optimizer_for(sub, optimizer, deep),
                             max_steps=stage_steps, e_rel=e_rel, progress=progress)
            model = merged(upgraded, idx, sub, frame.psf)
        else:
            upgraded = boxes(upgraded)
            model, hist = _fit(upgraded, fit_liks, optimizer=_optimizer_for(upgraded, optimizer, deep),
                               max_steps=stage_steps, e_rel=e_rel, progress=progress, canonical=canonical,
                               templates=templates(upgraded))
        losses.append(hist.loss)
        steps += hist.num_steps
        liks = _without_sky(fit_liks, model)
        sol = solve_linear(model, liks, frame.psf)
        model = set_spectra(model, sol.amplitudes)
    if refine_fit and not canonical:  # Gauss-Newton steps settle what Adam left creeping along valleys
        model, polish = refine(model, fit_liks)
        if polish.num_steps:
            losses.append(polish.loss)
            steps += polish.num_steps
            liks = _without_sky(fit_liks, model)
            sol = solve_linear(model, liks, frame.psf)
            model = set_spectra(model, sol.amplitudes)
    model = _drop_center_priors(model, auto_idx)
    fitted = scene._replace(model)
    fitted.history = FitHistory(loss=np.concatenate(losses), status=hist.status, num_steps=steps)
    fitted.fit_time = time.perf_counter() - t0
    fitted.choices = choices
    fitted.observations = bound
    fitted.measured_flux = _per_source(model, sol.flux)
    fitted.measured_flux_err = np.sqrt(_per_source(model, sol.flux_variance))
    if sky is not None:
        fitted.sky_model = sky
        images, coeffs = _sky(model, fit_liks)
        fitted.sky = {name: np.asarray(im, float) for name, im in zip(obs, images, strict=True)}
        fitted.sky_coefficients = {name: np.asarray(c, float) for name, c in zip(obs, coeffs, strict=True)}
    if point_refit and not canonical and n <= POINT_REFIT_MAX_SOURCES:
        width = math.sqrt(_observed_psf_variance(obs, frame))
        compact = [k for k in auto_idx if choices[k]["kind"] != "point"
                   and choices[k].get("first_r_e", np.inf) < COMPACT_RE * width]
        if compact:
            alt_kinds = ["point" if i in compact else k for i, k in enumerate(kinds)]
            alt = fit_sources(frame, obs, given, kinds=alt_kinds, names=names, max_steps=max_steps,
                              e_rel=e_rel, optimizer=optimizer, progress=progress, max_box=max_box,
                              center_sigma=center_sigma, sky=sky, windows=False, prior=prior,
                              refine_fit=refine_fit, point_refit=False, pixel_steps=pixel_steps,
                              misfit_pixels=misfit_pixels)
            fitted = _better_with_points(fitted, alt, compact)
    return fitted


def _center_widths(center_sigma, n: int) -> np.ndarray:
    """``center_sigma`` (a number or one per source) as an array of ``n`` positive widths."""
    sig = np.asarray(center_sigma, float)
    if sig.ndim > 1 or (sig.ndim == 1 and sig.shape != (n,)):
        raise ValueError(f"center_sigma must be a number or one per source ({n}); got shape {sig.shape}")
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(f"center_sigma must be finite and > 0; got {center_sigma!r}")
    return np.broadcast_to(sig, (n,)).astype(float).copy()


def _with_missing(frame, obs, given, kinds, names, new, new_snr, now, *, hist_loss, passes, **kw) -> Scene:
    """The scene fitted again with sources added at the residual peaks ``new`` (see ``find_missing``)."""
    n = len(given)
    centers = np.concatenate([given, new])
    all_kinds = list(kinds) + ["auto"] * len(new)
    all_names = None if names is None else list(names) + [f"added{n + i}" for i in range(len(new))]
    # the peak a detection found between two merged sources lies between them, and the residual
    # peak of the one it missed is pulled towards that model: both move farther than a detection
    # alone (on field blends: added sources 1.5-2.5 px from their true position at the wall)
    sigma = _center_widths(kw.pop("center_sigma", CENTER_SIGMA), n)
    nearest = {int(np.argmin(np.hypot(*(now[:n] - p).T))) for p in new}
    sigma = np.concatenate([sigma, np.full(len(new), float(np.median(sigma)))])
    for i in [*nearest, *range(n, n + len(new))]:
        sigma[i] *= ADDED_CENTER_SCALE
    out = fit_sources(frame, obs, centers, kinds=all_kinds, names=all_names, windows=False,
                      find_missing=passes - 1, center_sigma=sigma, **kw)
    d_chi2 = 2.0 * (float(out.history.loss[-1]) - float(hist_loss[-1]))
    for j, (p, s) in enumerate(zip(new, new_snr, strict=True)):
        d = float(np.min(np.hypot(*(now - p).T)))
        ch = out.choices[n + j]
        ch["added"] = True
        ch["reason"] = (f"added: residual peak S/N {s:.1f}, {d:.1f} px from the nearest source "
                        f"(scene chi2 {d_chi2:+.1f} from the first fit to the refit); " + ch["reason"])
    for ch in out.choices[:n]:
        ch.setdefault("added", False)
    return out


def _better_with_points(fitted: Scene, alt: Scene, compact: list) -> Scene:
    """``alt`` (``compact`` sources refitted as points) if its chi^2 is no higher than ``fitted``'s.

    The first test already charged the extended model its extra parameters; the refit only
    asks whether the extent it saw was the neighbours' shapes speaking. So the point is kept
    where it fits at least as well with fewer parameters; a marginal case keeps the first
    test's extended choice (on ``make_scenes.py`` seed 3141 a small galaxy, 4.2 better as a
    Sersic in the first test and 2.4 worse as a refitted point, lost 20 % more of its flux as
    a point).
    """
    d_chi2 = 2.0 * (float(alt.history.loss[-1]) - float(fitted.history.loss[-1]))
    which = "this source" if len(compact) == 1 else f"these {len(compact)} sources"
    keep_points = d_chi2 <= 0.0
    total_time = fitted.fit_time + alt.fit_time
    out = alt if keep_points else fitted
    for k in compact:
        old = fitted.choices[k]
        if keep_points:
            out.choices[k] = dict(old, kind="point", delta_chi2_point=d_chi2, reason=(
                f"point: refitted as a point with the whole scene ({which}), chi2 {d_chi2:+.1f} against "
                f"the extended fit: as good with {EXTENT_PARAMETERS} fewer parameters; first test: "
                f"{old['reason']}"))
        else:
            out.choices[k]["reason"] = (old["reason"] + f"; refitted as a point with the whole scene "
                                        f"({which}): chi2 {d_chi2:+.1f} > 0, extended kept")
    out.fit_time = total_time
    return out


def _fit_windows(frame, obs, centers, kinds, names, plan, **kw) -> Scene:
    """Fit each group of ``plan`` on its window; return the scene of all sources on ``frame``.

    Each window is fitted with source names ``src0 ...`` (names are part of a
    compiled program's key: windows of one size and content then share it) and
    the sources are renamed and moved back to frame pixels afterwards. The
    history sums the windows' losses step by step (a window that stopped
    keeps its last loss); its status is the worst of theirs.
    """
    n = len(centers)
    names = [f"src{i}" for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"expected {n} names; got {len(names)}")
    sources, choices = [None] * n, [None] * n
    flux, flux_err = [None] * n, [None] * n
    losses, statuses, steps = [], [], 0
    t0 = time.perf_counter()
    for w, (idx, box) in enumerate(plan):
        sub = window_frame(frame, box)
        sub_obs = window_observations(obs, frame, box)
        off = np.array([box[0], box[2]], float)
        sigma = _center_widths(kw.get("center_sigma", CENTER_SIGMA), n)[np.asarray(idx, int)]
        fitted = fit_sources(sub, sub_obs, centers[idx] - off, kinds=[kinds[i] for i in idx], windows=False,
                             **{**kw, "center_sigma": sigma})
        for j, i in enumerate(idx):
            src = fitted.sources[j]
            c = src.center  # moved in the constrained space: right for any centre constraint
            center = Parameter(np.asarray(c.value, float) + off, c.constraint, prior=c.prior, fixed=c.fixed,
                               step=c.step)
            sources[i] = Source(center, components=src.components, name=names[i])
            choices[i] = dict(fitted.choices[j])
            choices[i]["reason"] += f"; fitted in window {w} of {len(plan)}"
            flux[i], flux_err[i] = fitted.measured_flux[j], fitted.measured_flux_err[j]
        for j in range(len(idx), len(fitted.sources)):  # added at residual peaks (find_missing)
            src = fitted.sources[j]
            c = src.center
            center = Parameter(np.asarray(c.value, float) + off, c.constraint, prior=c.prior, fixed=c.fixed,
                               step=c.step)
            sources.append(Source(center, components=src.components, name=f"added{len(sources)}"))
            choices.append(dict(fitted.choices[j]))
            choices[-1]["reason"] += f"; fitted in window {w} of {len(plan)}"
            flux.append(fitted.measured_flux[j])
            flux_err.append(fitted.measured_flux_err[j])
        losses.append(np.asarray(fitted.history.loss, float))
        statuses.append(fitted.history.status)
        steps = max(steps, fitted.history.num_steps)
    if len(sources) > n:
        logger.info("added %d source(s) at residual peaks", len(sources) - n)
    logger.info("fitted %d sources in %d windows of the %d x %d frame", len(sources), len(plan), *frame.shape)
    length = max(len(h) for h in losses)
    loss = np.sum([np.pad(h, (0, length - len(h)), mode="edge") for h in losses], axis=0)
    status = next((s for s in ("diverged", "max_steps") if s in statuses), "converged")
    scene = Scene(frame)
    scene._sources = sources
    scene.history = FitHistory(loss=loss, status=status, num_steps=steps)
    scene.fit_time = time.perf_counter() - t0
    scene.choices = choices
    scene.measured_flux = np.stack(flux)
    scene.measured_flux_err = np.stack(flux_err)
    return scene


def _without_sky(likelihoods, model):
    """The likelihoods of the data less the sky fitted with ``model`` (for the linear steps)."""
    if all(getattr(lik, "sky", None) is None for lik in likelihoods):
        return likelihoods
    images, _ = _sky(model, likelihoods)
    return [GaussianLikelihood(np.asarray(lik.data - im), np.asarray(lik.weights), lik.renderer,
                               epoch=lik.epoch) for lik, im in zip(likelihoods, images, strict=True)]


@filter_jit
def _sky(model, likelihoods):
    """Each likelihood's fitted sky image and coefficients under ``model`` (compiled, not op by op)."""
    rendered = render_observations(model, likelihoods)
    skies = [lik.sky_from(r) for lik, r in zip(likelihoods, rendered, strict=True)]
    return [s[1] for s in skies], [s[0] for s in skies]


def refine_centers(frame: Frame, observations, centers, radius: float = REFINE_RADIUS,
                   min_move: float = 1.0, blend_guard: float = 2 * REFINE_RADIUS, *, detection=None):
    """Move given positions onto the nearby peak of the data (catalog positions are not exact).

    In the inverse-variance coadd of all observations, smoothed with a
    Gaussian of 1 pixel, each position whose pixel is not itself the local
    maximum moves to the highest local maximum within ``radius`` pixels,
    refined to sub-pixel precision by a parabola through the 3 x 3 pixels
    around it, when that peak is higher than the given pixel by more than the
    smoothed noise and no other given position is nearer to it (a peak
    belongs to its nearest source; co-located sources stay where they are).
    Moves shorter than ``min_move`` are not made: the fit settles sub-pixel
    offsets itself, and the peak of a blend's smoothed light is biased
    towards bright neighbours by about that much. Nor are moves onto a peak
    with another given position within ``blend_guard`` pixels: such a peak is
    partly the neighbour's light, and a source moved onto it takes its
    neighbour's light (two GalSim galaxies 3.9 px apart: the fainter moved
    2.3 px, fluxes -50 % and +110 %; kept in place, -8 % and +18 %); the fit's
    centre prior settles blended positions.

    Parameters
    ----------
    frame : Frame
    observations : mapping or sequence of Datasets
    centers : array (n, 2)
        ``(y, x)`` in model-frame pixels.
    radius : float
        Largest move, model-frame pixels.
    min_move : float
        Smallest move, model-frame pixels.
    blend_guard : float
        No move onto a peak that has another given position within this
        distance (model-frame pixels).
    detection : tuple, optional
        ``detection_image(observations, frame)`` when the caller has it
        already (it is not computed again).

    Returns
    -------
    centers : numpy.ndarray (n, 2)
    moved : dict
        ``{index: distance in pixels}`` of the positions that moved.
    """
    from scipy.ndimage import gaussian_filter, maximum_filter

    centers = np.array(centers, float)
    det, sigma, valid = detection_image(observations, frame) if detection is None else detection
    sm = gaussian_filter(np.where(valid, det, 0.0), 1.0)
    noise = sigma / (2 * math.sqrt(math.pi))  # white noise through a unit-sigma Gaussian
    peaks = (sm == maximum_filter(sm, size=3)) & valid
    hh, ww = sm.shape
    reach = int(math.ceil(radius)) + 1
    moved = {}
    for i, (cy, cx) in enumerate(centers):
        iy, ix = int(round(cy)), int(round(cx))
        if not (0 <= iy < hh and 0 <= ix < ww) or peaks[iy, ix]:
            continue
        # the window around the position (row-major order as on the frame: same first maximum)
        wy0, wx0 = max(iy - reach, 0), max(ix - reach, 0)
        win = (slice(wy0, min(iy + reach + 1, hh)), slice(wx0, min(ix + reach + 1, ww)))
        yy, xx = np.mgrid[win]
        near = peaks[win] & (np.hypot(yy - cy, xx - cx) <= radius)
        if not near.any():
            continue
        cand = np.flatnonzero(near.ravel())
        best = cand[np.argmax(sm[win].ravel()[cand])]
        py, px = divmod(int(best), near.shape[1])
        py, px = py + wy0, px + wx0
        if sm[py, px] - sm[iy, ix] < noise:
            continue
        dist_all = np.hypot(centers[:, 0] - py, centers[:, 1] - px)
        if np.argmin(dist_all) != i:
            continue
        if len(centers) > 1 and np.delete(dist_all, i).min() <= blend_guard:
            continue  # the peak is partly a neighbour's light
        new = np.array([py, px], float)
        if 0 < py < hh - 1 and 0 < px < ww - 1:
            for axis, (lo, mid, hi) in enumerate(((sm[py - 1, px], sm[py, px], sm[py + 1, px]),
                                                  (sm[py, px - 1], sm[py, px], sm[py, px + 1]))):
                curv = lo - 2 * mid + hi
                if curv < 0:
                    new[axis] += float(np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5))
        dist = float(np.hypot(*(new - centers[i])))
        if dist < min_move:
            continue  # within a pixel: the fit's own centre (and its prior) settle it
        moved[i] = dist
        centers[i] = new
    return centers, moved


def _per_source(model, values):
    """Sum component rows of ``values`` (component, band) into sources."""
    out, c = [], 0
    for src in model.sources:
        m = len(src.components)
        out.append(np.sum(values[c : c + m], axis=0))
        c += m
    return np.stack(out)


def _optimizer_for(model, optimizer, deep: bool = False):
    """The user's optimizer, else: decaying rate for parametric scenes, constant with pixels.

    Parametric shapes settle with a decaying rate: halved every 100 steps
    (:func:`~scarlet_xr.infer.settling_optimizer`), or with ``deep`` halved
    only when the loss stops improving (:func:`~scarlet_xr.infer.plateau_optimizer`:
    for fits whose Jacobian is too large for the Levenberg-Marquardt refinement, see
    :func:`fit_sources`); free-form pixels (many, each moving by about its
    step) need the constant rate of the default optimizer.
    """
    if optimizer is not None:
        return optimizer
    pixels = any(c.morphology.pixel_anchored for s_ in model.sources for c in s_.components)
    if pixels:
        return default_optimizer()
    return plateau_optimizer() if deep else settling_optimizer()


def _footprint_chi2(model, liks, frame, idx, maps: list | None = None):
    """Reduced chi^2 of the whole model on each source's footprint and its S/N.

    The footprint of source ``k`` is where its own rendered model exceeds the
    noise (1 sigma) in an observation band. Components are rendered on their
    own boxes (:func:`._init._render_stamps`); only the model and the residual
    of each observation band are full images. With a list ``maps``, the
    per-pixel chi^2 summed over bands of each observation on the frame's grid
    is appended to it as ``(y0, x0, map)`` (see :func:`_box_chi2`).
    """
    from ._init import _render_stamps
    from ._linear import _component_stamps

    stamps = _component_stamps(model, frame.psf)
    spectra = np.stack([np.asarray(c.spectrum(), float) for s_ in model.sources for c in s_.components])
    comp0 = np.cumsum([0] + [len(s_.components) for s_ in model.sources])
    num = {k: 0.0 for k in idx}
    cnt = {k: 0 for k in idx}
    snr2 = {k: 0.0 for k in idx}
    for lik in liks:
        patches = _render_stamps(lik.renderer, stamps, model.shape)
        band_index = getattr(lik.renderer, "band_index", tuple(range(lik.data.shape[0])))
        data, weights = np.asarray(lik.data), np.asarray(lik.weights)
        crop = getattr(lik.renderer, "crop", None)  # None: resampled, no frame-aligned map
        chi2_map = np.zeros(data.shape[1:]) if maps is not None and crop is not None else None
        for j, b in enumerate(band_index):
            w = np.asarray(weights[j], float)
            # each source's rendered model in this band on the union of its components' boxes
            per_source = []
            for i in range(len(model.sources)):
                parts = [(p, spectra[c, b]) for c in range(comp0[i], comp0[i + 1])
                         if (p := patches[c]) is not None]
                if not parts:
                    per_source.append(None)
                    continue
                y0 = min(p[0] for p, _ in parts)
                x0 = min(p[1] for p, _ in parts)
                y1 = max(p[0] + p[2].shape[1] for p, _ in parts)
                x1 = max(p[1] + p[2].shape[2] for p, _ in parts)
                img = np.zeros((y1 - y0, x1 - x0))
                for (py, px, vals), amp in parts:
                    img[py - y0 : py - y0 + vals.shape[1], px - x0 : px - x0 + vals.shape[2]] += amp * vals[j]
                per_source.append((y0, x0, img))
            resid = np.array(data[j], float)
            for p in per_source:
                if p is not None:
                    resid[p[0] : p[0] + p[2].shape[0], p[1] : p[1] + p[2].shape[1]] -= p[2]
            if chi2_map is not None:
                chi2_map += w * resid**2
            for k in idx:
                if per_source[k] is None:
                    continue
                y0, x0, img = per_source[k]
                sl = (slice(y0, y0 + img.shape[0]), slice(x0, x0 + img.shape[1]))
                wk = w[sl]
                foot = (img * np.sqrt(wk) > 1.0) & (wk > 0)
                num[k] += float(np.sum((wk * resid[sl] ** 2)[foot]))
                cnt[k] += int(foot.sum())
                snr2[k] += float(np.sum(wk * img**2))
        if chi2_map is not None:
            maps.append((crop[0], crop[2], chi2_map))
    return {k: (num[k] / max(cnt[k], 1), cnt[k], math.sqrt(snr2[k])) for k in idx}


def _free_form_misfits(model, liks, frame, auto_idx, choices, given, one_sersic=None, pixels: bool = True,
                       fit_box: bool = False):
    """Switch bright extended sources that a Sersic does not fit to monotonic pixel models.

    Real galaxies (spiral arms, bars, clumps) leave structured residuals that
    no smooth profile removes; on their footprint the reduced chi^2 stays above
    ``MISFIT_CHI2``. Such sources, when their S/N exceeds ``MISFIT_SNR``,
    become :class:`~scarlet_xr.core.MonotonicMorphology` pixels (positive and
    non-increasing away from the given position's pixel) started from the
    fitted profile. Monotonicity, not free pixels: measured on the real HSC
    cutout, unconstrained pixels of neighbouring bright sources trade light
    (centroids 4-14 px from their anchors, SEDs with empty bands), while
    monotonic models keep each source's light around its own peak.

    A bulge + disk source goes back to its one-Sersic fit (``one_sersic``:
    ``{k: (footprint reduced chi^2, Sersic source, chi^2 maps)}`` from
    :func:`_bulge_disk`) when it does not lower chi^2 on its box by more than
    its extra parameters (bands - 1) below that fit (a pure exponential disk
    at S/N 1500: +2.4-3.1 % as bulge + disk, within 0.2 % as one Sersic), or
    when it misfits while the Sersic did not: its profile is a Sersic of an
    index far from 1 and 4 (measured: a Gaussian galaxy at S/N 2000 left
    reduced chi^2 14-23 as bulge + disk, 1.0 as one Sersic, and came out 1 %
    (7 sigma) too bright as monotonic pixels, which cannot go below zero
    where the noise does).
    With ``pixels`` False, only the bulge + disk test runs (no source becomes pixels).
    Returns ``(new model, indices of the changed sources)``, or None if nothing changed.
    """
    one_sersic = one_sersic or {}
    ext = [k for k in auto_idx if choices[k]["kind"] in ("sersic", "bulge+disk")]
    if not ext:
        return None
    maps = []
    stats = _footprint_chi2(model, liks, frame, ext, maps=maps)
    sources = list(model.sources)
    changed = []
    extra = model.shape[0] - 1  # a second spectrum, two indices fixed instead of one free
    for k in ext:
        chi2, npix, snr = stats[k]
        back = None  # why a bulge+disk goes back to its one-Sersic fit
        if choices[k]["kind"] == "bulge+disk" and k in one_sersic:
            sersic_chi2, _, maps1 = one_sersic[k]
            size = max(c.morphology.shape[0] for c in sources[k].components)
            c = np.asarray(sources[k].center.value, float)
            bd, one = (_box_chi2(maps, c, size), _box_chi2(maps1, c, size)) if maps else (0.0, 0.0)
            sersic_fits = sersic_chi2 <= MISFIT_CHI2
            if maps and bd > one - extra and (sersic_fits or snr < MISFIT_SNR):
                back = (f"does not lower chi2 on its box by more than its {extra} extra parameters "
                        f"({bd:.1f} vs {one:.1f})")
            elif chi2 > MISFIT_CHI2 and snr >= MISFIT_SNR and sersic_fits:
                back = (f"leaves reduced chi2 {chi2:.2f} > {MISFIT_CHI2} on its footprint ({npix} px), "
                        f"the Sersic {sersic_chi2:.2f}")
        if back is not None:
            sources[k] = one_sersic[k][1]
            choices[k].update(kind="sersic",
                              reason=choices[k]["reason"] + f"; back to one Sersic: the bulge+disk {back}")
            changed.append(k)
            continue
        if not pixels or chi2 <= MISFIT_CHI2 or snr < MISFIT_SNR:
            continue
        anchor, spec, img = _pixel_start(sources[k], frame, given[k], fit_box=fit_box)
        sources[k] = Source(anchor, Spectrum(spec), MonotonicMorphology(img), name=sources[k].name)
        choices[k].update(
            kind="monotonic",
            reason=choices[k]["reason"]
            + f"; monotonic pixels: the {choices[k]['kind']} model leaves reduced chi2 {chi2:.2f} > "
            f"{MISFIT_CHI2} on its footprint ({npix} px) at S/N {snr:.0f}",
        )
        changed.append(k)
    if not changed:
        return None
    return type(model)(sources, model.shape, psf=frame.psf), changed


def _with_pixel_prior(model, frame, auto_idx, choices, given, prior, fit_box: bool = False):
    """Extended ``auto`` sources as free-form pixels with ``prior``, started from their fits.

    Given free-form sources get ``prior`` on their image; point sources and
    other given kinds are unchanged.
    """
    sources = list(model.sources)
    auto = set(auto_idx)
    for k, src in enumerate(sources):
        morphs = [c.morphology for c in src.components]
        if k not in auto:
            if len(morphs) == 1 and isinstance(morphs[0], FreeFormMorphology):
                sources[k] = eqx.tree_at(lambda s_: s_.components[0].morphology.image.prior, src, prior,
                                         is_leaf=lambda v: v is None)
            continue
        if choices[k]["kind"] == "point":
            continue
        anchor, spec, img = _pixel_start(src, frame, given[k], fit_box=fit_box)
        image = Parameter(img, Positive(), step=FREE_STEP, prior=prior)
        sources[k] = Source(anchor, Spectrum(spec), FreeFormMorphology(image), name=src.name)
        choices[k].update(kind="free", reason=choices[k]["reason"]
                          + f"; pixels with a morphology prior, started from the fitted {choices[k]['kind']}")
    return type(model)(sources, model.shape, psf=frame.psf)


def _pixel_start(src, frame, given, fit_box: bool = False):
    """Pixel model start for a fitted source: ``(anchor, spectrum, image with peak 1)``.

    The pixels are anchored on the given position's pixel (the peak a detection
    found) or, when the fitted profile moved more than a pixel from it (a catalog
    position off the peak) and stays inside the frame, on the profile's centre;
    the image is the source's light (all its components, weighted by their flux)
    at the model PSF's resolution on its largest box (with ``fit_box``, the box its
    fitted profiles need, when smaller: see :data:`ONE_BOX_PIXELS`), floored at 1e-3 of the peak.
    """
    fitted = np.asarray(src.center.value, float)
    inside = np.all((fitted >= 0) & (fitted <= np.asarray(frame.shape) - 1))
    anchor = np.round(fitted if inside and np.hypot(*(fitted - given)) > 1.0 else given)
    offset = jnp.asarray(fitted - anchor, src.center.raw.dtype)
    spectra = [np.asarray(c.spectrum(), float) for c in src.components]
    total = np.sum(spectra, axis=0)
    # (the box the fitted profiles need, not a larger one the scene's layout shared: pixels are
    # parameters, and on the HSC cutout a refit's monotonic sources in the shared 59 px box
    # ended at reduced chi^2 1.65 instead of 1.47)
    size = max(min(c.morphology.shape[0], _fitted_box(c.morphology, c.morphology.shape[0]))
               if fit_box and isinstance(c.morphology, SersicMorphology) else c.morphology.shape[0]
               for c in src.components)
    img = np.zeros((size, size))
    for c, sp in zip(src.components, spectra, strict=True):
        part = np.asarray(morphology_image(c.morphology, offset), float)
        if c.morphology.intrinsic:  # pixels live at the model PSF's resolution
            part = _np_convolve(part, np.asarray(frame.psf, float))
        if part.shape[0] > size:  # its far wings, beyond the box the profile needs
            cut = (part.shape[0] - size) // 2
            part = part[cut : cut + size, cut : cut + size]
        o = (size - part.shape[0]) // 2
        img[o : o + part.shape[0], o : o + part.shape[1]] += part * sp.sum() / max(total.sum(), 1e-30)
    peak = float(img.max())
    return anchor, total * peak, np.clip(img / peak, 1e-3, None)


def _choose(model, liks, frame, auto_idx, choices):
    """Switch ``auto`` sources to point sources where the data do not support extent."""
    comp_of_source, c = [], 0
    for src in model.sources:
        comp_of_source.append(list(range(c, c + len(src.components))))
        c += len(src.components)
    delta = _delta_chi2_point(model, liks, frame, auto_idx, comp_of_source)
    sources = list(model.sources)
    for k in auto_idx:
        penalty = float(EXTENT_PARAMETERS)
        d = float(delta[k])
        morph = sources[k].components[0].morphology
        re = float(morph.r_e.value)
        point = d <= penalty
        if point:
            reason = f"point: a Sersic lowers chi2 by only {d:.1f} <= {penalty:.0f} (its extra parameters)"
            # the point source is its own morphology type: points and Sersics render in
            # separate vmapped groups, each computing only what it needs
            sources[k] = _as_point(sources[k], frame)
        else:
            n_idx = float(morph.n.value)
            reason = (f"extended: a Sersic (n {n_idx:.2f}, r_e {re:.2f} px) lowers chi2 by {d:.1f} > "
                      f"{penalty:.0f}")
        choices[k].update(kind="point" if point else "sersic", delta_chi2_point=d, reason=reason,
                          first_r_e=re)
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources))


def _common_box(morphs, max_box: int, scale: float = 1.0) -> int:
    """Canonical box size holding every Sersic of ``morphs`` (see :func:`_needed_box`)."""
    if not morphs:
        return 0
    return min(_canonical(max(max(m.shape[0], _needed_box(m, scale)) for m in morphs)), max_box)


def _fitted_box(sersic: SersicMorphology, max_box: int) -> int:
    """Canonical box for a fitted Sersic: what it needs (:func:`_needed_box` with
    :data:`FITTED_BOX_MARGIN`), up to ``max_box``."""
    return min(_canonical(_needed_box(sersic, FITTED_BOX_MARGIN)), max_box)


def _needed_box(sersic: SersicMorphology, scale: float = 1.0) -> int:
    """Box side holding ``BOX_RADII_RE`` half-light radii (times ``scale``) plus the PSF core."""
    return 2 * int(math.ceil(BOX_RADII_RE * scale * float(sersic.r_e.value) + 2)) + 1


def _resized(sersic: SersicMorphology, size: int) -> SersicMorphology:
    """The same profile on a ``size`` box, sampled :data:`SERSIC_OVERSAMPLE` per pixel (the centre 16x16)."""
    if sersic.shape == (size, size) and sersic.oversample == SERSIC_OVERSAMPLE:
        return sersic
    return SersicMorphology(sersic.n, sersic.r_e, sersic.ellipticity, shape=size,
                            oversample=SERSIC_OVERSAMPLE)


def _with_index_prior(sersic: SersicMorphology) -> SersicMorphology:
    """``sersic`` with the :data:`SERSIC_INDEX_PRIOR` on a free index that has no prior yet."""
    n = sersic.n
    if n.fixed or n.prior is not None:
        return sersic
    mean, sigma = SERSIC_INDEX_PRIOR
    return eqx.tree_at(lambda m: m.n, sersic, Parameter(np.asarray(n.value, float), n.constraint,
                                                        prior=NormalPrior(mean, sigma), step=n.step))


def _grow_boxes(model, auto_idx, choices, max_box, psf, common: bool = False, budget: int | None = None):
    """Give each extended ``auto`` source the canonical box its fitted size now needs.

    Called once, after the first fit, so compiled shapes change at most once.
    Own boxes grow or shrink to :func:`_fitted_box` (the start's boxes hold
    twice the first guess of each size, and the steps' cost grows with the
    boxes' area); point sources keep theirs. With ``common``, every extended
    source gets the largest box any of them needs (never smaller than now),
    unless their number times its area exceeds ``budget`` pixels (own boxes then).
    """
    sources = list(model.sources)
    changed = False
    ext = [k for k in auto_idx if choices[k]["kind"] == "sersic"]
    largest = max((max(sources[k].components[0].morphology.shape[0],
                       _common_box([sources[k].components[0].morphology], max_box)) for k in ext), default=0)
    if common and budget is not None and len(ext) * largest**2 > budget:
        common = False
    for k in auto_idx:
        m = sources[k].components[0].morphology
        if choices[k]["kind"] != "sersic":
            continue
        # (own boxes: the size the fitted profile needs, smaller than the start's when the
        # first fit found it smaller: the steps' cost grows with the boxes' area)
        box = largest if common else _fitted_box(m, max_box)
        if box == m.shape[0]:
            continue
        comp = eqx.tree_at(lambda c: c.morphology, sources[k].components[0], _resized(m, box))
        sources[k] = eqx.tree_at(lambda s: s.components, sources[k], (comp,))
        changed = True
    if not changed:
        return model
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources))


def _layout_templates(base, model, frame, cache: dict | None = None) -> tuple:
    """A one-Sersic, a point and a bulge + disk source made from ``base`` (a one-Sersic ``auto``
    source) for a canonical fit of ``model`` (``fit(..., templates=)``).

    Each is built as the model choice builds that kind (:func:`_choose`,
    :func:`_bulge_disk`), on the box the model's extended sources share (the
    canonical layout gives them one), so that blends of one stamp size share
    a compiled program whichever of these kinds their sources turned out to be.
    ``cache`` (a dict) keeps the templates of each box size for the next call.
    """
    if base is None or not isinstance(base.components[0].morphology, SersicMorphology):
        return ()
    boxes = [c.morphology.shape[0] for s_ in model.sources for c in s_.components
             if isinstance(c.morphology, SersicMorphology)]
    comp = base.components[0]
    box = max(boxes) if boxes else comp.morphology.shape[0]
    if cache is not None and box in cache:
        return cache[box]
    m = _resized(comp.morphology, box)
    sersic = eqx.tree_at(lambda s_: s_.components, base, (eqx.tree_at(lambda c: c.morphology, comp, m),))
    step = comp.spectrum.values.step if isinstance(comp.spectrum, Spectrum) else 0.03
    bd = _as_bulge_disk(base, float(m.r_e.value), np.asarray(m.ellipticity.value, float),
                        np.asarray(comp.spectrum(), float), step, box)
    point = _as_point(base, frame)
    if cache is not None:
        cache[box] = (sersic, point, bd)
    return sersic, point, bd


def _as_point(src, frame):
    """``src`` with its (first) component's morphology a point source of the frame's PSF."""
    comp = eqx.tree_at(lambda c: c.morphology, src.components[0],
                       PointSourceMorphology(frame.psf, sigma=frame.psf_sigma))
    return eqx.tree_at(lambda s_: s_.components, src, (comp,))


def _as_bulge_disk(src, r_e, ellipticity, spectrum, step, box):
    """``src`` as a bulge + disk started from one profile's size, shape and spectrum
    (:data:`BULGE_DISK_SPLIT` of the spectrum each) on ``box`` pixels."""
    bulge, disk = bulge_disk_morphologies(r_e, ellipticity, box, SERSIC_OVERSAMPLE)
    split = BULGE_DISK_SPLIT
    return Source(src.center, components=[Component(Spectrum(split[0] * spectrum, step=step), bulge),
                                          Component(Spectrum(split[1] * spectrum, step=step), disk)],
                  name=src.name)


def _bulge_disk(model, liks, frame, auto_idx, choices, max_box, common: bool = False,
                budget: int | None = None):
    """Make extended ``auto`` sources with S/N > :data:`BULGE_DISK_SNR` bulge + disk.

    The bulge (Sersic n = 4) and the disk (n = 1) share the source's centre and
    orientation, each with its own spectrum; both start from the one-profile
    fit (:func:`~scarlet_xr.scene.bulge_disk_morphologies`), in the canonical box the disk needs.
    Returns the model and ``{k: (footprint reduced chi^2, one-Sersic source)}``
    of the sources changed (see :func:`_free_form_misfits`). With ``common``,
    every bulge + disk gets the largest box any of them needs, unless their
    components' number times its area exceeds ``budget`` pixels.
    """
    ext = [k for k in auto_idx if choices[k]["kind"] == "sersic"]
    one_sersic = {}
    if not ext:
        return model, one_sersic
    maps = []
    stats = _footprint_chi2(model, liks, frame, ext, maps=maps)
    sources = list(model.sources)
    made = {}  # k: (r_e, ellipticity, spectrum, step, box)
    for k in ext:
        snr = stats[k][2]
        if not snr > BULGE_DISK_SNR:
            continue
        src = sources[k]
        comp = src.components[0]
        m = comp.morphology
        n_idx = float(m.n.value)
        if n_idx < BULGE_DISK_MIN_N:
            choices[k]["reason"] += (f"; one Sersic at S/N {snr:.0f}: its index n {n_idx:.2f} < "
                                     f"{BULGE_DISK_MIN_N} is flatter than an exponential disk")
            continue
        one_sersic[k] = (stats[k][0], src)  # (its footprint chi^2, the source) + chi^2 maps below
        re = float(m.r_e.value)
        ell = np.asarray(m.ellipticity.value, float)
        spec = np.asarray(comp.spectrum(), float)
        # box: the canonical size the (larger) disk needs
        _, disk = bulge_disk_morphologies(re, ell, 11, SERSIC_OVERSAMPLE)
        box = max(m.shape[0], _common_box([disk], max_box))
        step = comp.spectrum.values.step if isinstance(comp.spectrum, Spectrum) else 0.03
        made[k] = (re, ell, spec, step, box)
        choices[k].update(
            kind="bulge+disk",
            reason=choices[k]["reason"] + f"; bulge+disk: S/N {snr:.0f} > {BULGE_DISK_SNR:.0f} "
            "(a bulge and a disk with their own spectra measure colour gradients)",
        )
    if not made:
        return model, one_sersic
    largest = max(v[4] for v in made.values())
    if common and budget is not None and 2 * len(made) * largest**2 > budget:
        common = False
    for k, (re, ell, spec, step, box) in made.items():
        sources[k] = _as_bulge_disk(sources[k], re, ell, spec, step, largest if common else box)
    one_sersic = {k: (*v, maps) for k, v in one_sersic.items()}
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources)), one_sersic


def _box_chi2(maps, center, size: int) -> float:
    """Sum of the chi^2 maps on the box of ``size`` around ``center`` (frame pixels)."""
    h = size // 2
    tot = 0.0
    for y0, x0, m in maps:
        cy, cx = int(round(float(center[0]))) - y0, int(round(float(center[1]))) - x0
        tot += float(m[max(cy - h, 0) : max(cy + h + 1, 0), max(cx - h, 0) : max(cx + h + 1, 0)].sum())
    return tot


def _flag_truncated(model, auto_idx, choices, max_box):
    """Flag extended sources whose fitted size needs a box beyond the one they have."""
    for k in auto_idx:
        if choices[k]["kind"] in ("sersic", "bulge+disk"):
            choices[k]["box_truncated"] = any(
                bool(_needed_box(c.morphology) > c.morphology.shape[0])
                for c in model.sources[k].components)


def _drop_center_priors(model, auto_idx):
    sources = list(model.sources)
    for k in auto_idx:
        c = sources[k].center
        sources[k] = eqx.tree_at(lambda s: s.center, sources[k], Parameter(c.value, step=c.step))
    return eqx.tree_at(lambda m: m.sources, model, tuple(sources))


