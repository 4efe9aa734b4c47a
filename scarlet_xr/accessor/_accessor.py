"""The ``.scarlet`` accessor on DataArray, Dataset and DataTree.

Registered when :mod:`scarlet_xr` is imported. Accessors are thin: they
validate the object, expose its WCS, PSF and weights, and delegate fitting to
the ``scene`` layer (imported lazily inside :meth:`fit`, because ``scene``
sits above ``xr`` in the layering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..scene import DEFAULT_E_REL, fit_observations
from ..xr import X, Y, catalog_from_tree, check_observation, observation_wcs, source_image

if TYPE_CHECKING:  # (astropy is imported where a WCS is used)
    from astropy.wcs import WCS

__all__ = ["ScarletDataArrayAccessor", "ScarletDatasetAccessor", "ScarletDataTreeAccessor"]


def _require_wcs(obj, what: str) -> WCS:
    w = observation_wcs(obj)
    if w is None:
        raise ValueError(
            f"this {what} has no WCS (attrs['wcs_header'] is missing); read it with "
            "scarlet_xr.open_observation or pass wcs= to scarlet_xr.make_observation"
        )
    return w


@xr.register_dataarray_accessor("scarlet")
class ScarletDataArrayAccessor:
    """``da.scarlet``: WCS and weights of an image ``(band, y, x)``.

    A DataArray carries its WCS in ``attrs["wcs_header"]`` (as the ``data``
    variable of an observation does) and its weights as an optional
    ``weight`` coordinate. It cannot carry a PSF; fit the observation
    Dataset instead.

    Examples
    --------
    >>> import numpy as np, scarlet_xr as sx
    >>> from astropy.wcs import WCS
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> obs = sx.make_observation(np.ones((1, 5, 5)), psf=np.ones((1, 3, 3)), wcs=wcs)
    >>> image = obs["data"].isel(y=slice(2, None))
    >>> float(image.scarlet.wcs.wcs.crpix[1])  # reference pixel follows the cutout
    -2.0
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.DataArray):
        self._obj = obj

    @property
    def wcs(self) -> WCS:
        """Celestial WCS of this (possibly sliced) image.

        Raises
        ------
        ValueError
            Without a WCS, or when it is stale (pixel grid reduced or strided).
        """
        return _require_wcs(self._obj, "DataArray")

    @property
    def weights(self) -> xr.DataArray:
        """The ``weight`` coordinate (inverse variance, 0 = masked)."""
        if "weight" not in self._obj.coords:
            raise ValueError(
                "this DataArray carries no 'weight' coordinate; use the observation Dataset "
                "(obs.scarlet.weights)"
            )
        return self._obj.coords["weight"]

    @property
    def psf(self):
        """Not available on a DataArray (raises ``ValueError``)."""
        raise ValueError(
            "a DataArray cannot carry its PSF; use the observation Dataset (obs.scarlet.psf), "
            "e.g. from scarlet_xr.open_observation or scarlet_xr.make_observation"
        )

    def fit(self, *args, **kwargs):
        """Not available on a DataArray (raises ``ValueError``): fit the observation Dataset."""
        raise ValueError(
            "fit the observation Dataset (with data, weight and psf), not a DataArray: "
            "obs.scarlet.fit()"
        )


@xr.register_dataset_accessor("scarlet")
class ScarletDatasetAccessor:
    """``obs.scarlet``: an observation's WCS, PSF, weights, and fitting.

    Raises ``ValueError``/``TypeError`` on access when the Dataset is not an
    observation (see :func:`~scarlet_xr.make_observation`).

    Examples
    --------
    >>> import numpy as np, scarlet_xr as sx
    >>> obs = sx.make_observation(np.ones((2, 5, 5)), psf=np.ones((2, 3, 3)), bands=["g", "r"])
    >>> obs.scarlet.psf.dims
    ('band', 'psf_y', 'psf_x')
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.Dataset):
        check_observation(obj)
        self._obj = obj

    @property
    def wcs(self) -> WCS:
        """Celestial WCS of this (possibly sliced) observation.

        Raises
        ------
        ValueError
            Without a WCS, or when it is stale.
        """
        return _require_wcs(self._obj, "observation")

    @property
    def psf(self) -> xr.DataArray:
        """PSF per band ``(band, psf_y, psf_x)``, unit sum."""
        return self._obj["psf"]

    @property
    def weights(self) -> xr.DataArray:
        """Inverse variance ``(band, y, x)``; 0 marks masked pixels."""
        return self._obj["weight"]

    def pixel_to_sky(self, y, x):
        """``(ra, dec)`` in degrees of pixel indices ``y``, ``x`` (original-image indices).

        Parameters
        ----------
        y, x : array_like
            Values of this observation's ``y``/``x`` coordinates.
        """
        w = self.wcs
        y = np.asarray(y, float) - float(self._obj[Y].values[0])
        x = np.asarray(x, float) - float(self._obj[X].values[0])
        ra, dec = w.pixel_to_world_values(x, y)
        return np.asarray(ra), np.asarray(dec)

    def fit(self, centers=None, *, kinds="auto", max_steps: int = 1000, e_rel: float = DEFAULT_E_REL,
            optimizer=None, detect_threshold: float = 3.0, progress: bool = False,
            sky: str | None = None) -> xr.DataTree:
        """Detect (if needed), initialise and fit sources; return the results tree.

        The input Dataset is never modified.

        Parameters
        ----------
        centers : array (n, 2), optional
            ``(y, x)`` source positions in this observation's coordinates
            (values of its ``y``/``x`` coords). Default: detected with ``sep``
            on the detection image (:func:`scarlet_xr.scene.detect_sources`).
        kinds : str or sequence of str
            ``"auto"`` (default: point source, Sersic or bulge + disk per
            source, chosen from the data) or kinds of
            :func:`scarlet_xr.initialize_sources`.
        max_steps, e_rel, optimizer, progress
            See :meth:`scarlet_xr.Scene.fit`.
        detect_threshold : float
            Detection threshold in units of the detection-image noise.
        sky : {None, "constant", "plane"}
            Fit a background per band with the sources (see
            :func:`scarlet_xr.scene.fit_sources`).

        Returns
        -------
        xarray.DataTree
            Results (layout in :mod:`scarlet_xr.xr._results`).
        """

        return fit_observations(
            self._obj, centers, kinds=kinds, max_steps=max_steps, e_rel=e_rel,
            optimizer=optimizer, detect_threshold=detect_threshold, progress=progress, sky=sky,
        )


@xr.register_datatree_accessor("scarlet")
class ScarletDataTreeAccessor:
    """``tree.scarlet``: a results tree's frame WCS, observations, PSFs, weights, refit."""

    __slots__ = ("_obj",)

    def __init__(self, obj: xr.DataTree):
        self._obj = obj

    def _check(self) -> None:
        for node in ("observations", "sources"):
            if node not in self._obj.children:
                raise ValueError(
                    f"not a scarlet_xr results tree: no /{node} node; has {list(self._obj.children)}"
                )

    @property
    def wcs(self) -> WCS:
        """Celestial WCS of the model frame (root ``attrs['wcs_header']``)."""
        header = self._obj.attrs.get("wcs_header")
        if header is None:
            raise ValueError("this results tree has no frame WCS (root attrs['wcs_header'])")
        from astropy.io import fits
        from astropy.wcs import WCS

        return WCS(fits.Header.fromstring(header), relax=True)

    def observations(self) -> dict[str, xr.Dataset]:
        """``{name: observation Dataset}`` rebuilt from ``/observations``."""
        self._check()
        out = {}
        for name, node in self._obj["observations"].children.items():
            ds = node.to_dataset()
            obs = ds[["data", "weight", "psf"]]
            obs.attrs = {k: v for k, v in ds.attrs.items() if k != "chi2_reduced"}
            out[str(name)] = obs
        return out

    @property
    def psf(self) -> dict[str, xr.DataArray]:
        """PSF per observation."""
        return {k: v["psf"] for k, v in self.observations().items()}

    @property
    def weights(self) -> dict[str, xr.DataArray]:
        """Weights per observation."""
        return {k: v["weight"] for k, v in self.observations().items()}

    def fit(self, *, max_steps: int = 1000, e_rel: float = DEFAULT_E_REL, optimizer=None,
            progress: bool = False) -> xr.DataTree:
        """Fit again from the stored observations and source positions and kinds.

        Sources are re-initialised at their centre parameters (``/sources``
        ``anchor_y``, ``anchor_x``; ``y``, ``x`` in trees without them) with
        their kinds (kinds the default path chose, per ``kind_reason``, are
        chosen again), and the sky model of the first fit (root attribute
        ``sky``).

        Returns
        -------
        xarray.DataTree
        """
        self._check()

        src = self._obj["sources"].to_dataset()
        # the centre parameters of the fit (older trees: the reported positions)
        ky, kx = ("anchor_y", "anchor_x") if "anchor_y" in src else ("y", "x")
        centers = np.stack([src[ky].values, src[kx].values], axis=1)
        # a fitted centre may sit a fraction of a pixel beyond the last pixel
        ny, nx = self._obj["model"].sizes["y"], self._obj["model"].sizes["x"]
        y0, x0 = float(self._obj["model"]["y"].values[0]), float(self._obj["model"]["x"].values[0])
        centers = np.clip(centers, [y0, x0], [y0 + ny - 1, x0 + nx - 1])
        # morphology kind labels -> initialisation kinds ("freeform" -> "free")
        kinds = [{"freeform": "free"}.get(str(k), str(k)) for k in src["kind"].values]
        if "kind_reason" in src:  # kinds the default path chose are chosen again
            kinds = [k if str(r).startswith("given") else "auto"
                     for k, r in zip(kinds, src["kind_reason"].values, strict=True)]
        sky = self._obj.attrs.get("sky", "none")
        return fit_observations(
            list(self.observations().values()), centers, kinds=kinds, max_steps=max_steps,
            e_rel=e_rel, optimizer=optimizer, progress=progress, sky=None if sky == "none" else sky,
        )


    def catalog(self, *, columns=None):
        """The source catalog: one row per source, with units and descriptions.

        See :func:`scarlet_xr.xr.catalog_from_tree` for the columns.

        Parameters
        ----------
        columns : sequence of str, optional
            Keep only these columns.

        Returns
        -------
        astropy.table.Table
        """
        return catalog_from_tree(self._obj, columns=columns)

    def deblended(self, observation: str | None = None, source: int | None = None) -> xr.Dataset:
        """Deblended images, footprints and segmentation of one observation.

        Parameters
        ----------
        observation : str, optional
            Observation name (default: the first).
        source : int, optional
            Position of one source along ``source``: its image and footprint
            pasted into the observation's full ``y``, ``x`` grid.

        Returns
        -------
        xarray.Dataset
            Without ``source``: the stored node, ``image (source, band,
            stamp_y, stamp_x)`` and ``footprint (source, stamp_y, stamp_x)`` on
            each source's box (first pixel ``stamp_y0``, ``stamp_x0``; see
            :func:`scarlet_xr.xr.source_image`), ``segmentation (y, x)``,
            ``blendedness``. With ``source``: ``image (band, y, x)`` and
            ``footprint (y, x)`` of that source, ``segmentation``.
        """
        if "deblended" not in self._obj.children:
            raise ValueError("this results tree has no /deblended node (fit again with this version)")
        nodes = self._obj["deblended"].children
        name = next(iter(nodes)) if observation is None else observation
        if name not in nodes:
            raise ValueError(f"unknown observation {name!r}; the tree has {list(nodes)}")
        ds = nodes[name].to_dataset()
        if source is None:
            return ds
        k = _source_position(ds, source)
        return xr.Dataset(
            {
                "image": (("band", "y", "x"), source_image(ds, "image", k), ds["image"].attrs),
                "footprint": (("y", "x"), source_image(ds, "footprint", k), ds["footprint"].attrs),
                "segmentation": ds["segmentation"],
            },
            coords={"band": ds["band"].values, "y": ds["y"].values, "x": ds["x"].values},
            attrs=ds.attrs,
        )

    def source_model(self, source: int) -> xr.DataArray:
        """One source's model (model PSF) on the whole model frame.

        Parameters
        ----------
        source : int
            Position of the source along ``source``.

        Returns
        -------
        xarray.DataArray (band, y, x)
        """
        self._check()
        ds = self._obj["model"].to_dataset()
        k = _source_position(ds, source)
        return xr.DataArray(source_image(ds, "model", k), dims=("band", "y", "x"),
                            coords={"band": ds["band"].values, "y": ds["y"].values, "x": ds["x"].values},
                            name="model")

    def inspect(self, *, observation: str | None = None):
        """Interactive inspector of these results (needs the ``widgets`` extra).

        See :func:`scarlet_xr.widgets.inspect`.

        Returns
        -------
        scarlet_xr.widgets.Inspector
        """
        self._check()
        from ..widgets import inspect  # lower layer, lazily: holoviews/panel load only here

        return inspect(self._obj, observation=observation)


def _source_position(ds, source) -> int:
    """Check a source position against a node's ``source`` axis."""
    n = ds.sizes["source"]
    if isinstance(source, bool) or not isinstance(source, (int, np.integer)) or not 0 <= int(source) < n:
        raise ValueError(f"source must be an integer in [0, {n - 1}]; got {source!r}")
    return int(source)
