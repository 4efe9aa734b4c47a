"""A fitted scene's products evaluated on the host, component by component.

The results of a fit (each component on its box, the fluxes, the model cube
and its image in every observation) are needed once per scene. Compiling one
program for the whole scene to get them costs about a second per scene
structure (its mix of source kinds, box sizes and counts), paid again for
every blend of a survey. Evaluated here instead, each component's profile
comes from :func:`~scarlet_xr.core.morphology_images` (Sersic profiles and
Gaussian-PSF points computed with numpy; other types one compiled program
per morphology type and box size, shared by every scene of a process; the
large stacks of crowded scenes 16 components per call) and the rest is numpy:
convolution with the model PSF, placement on the frame and the observations'
renderers (``render_numpy``).
"""

from __future__ import annotations

import numpy as np

from ..core import ConvolutionRenderer, SceneModel, morphology_images
from ._linear import _box_sums

__all__ = ["host_products", "render_on_host"]


def _convolve_full(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full convolution (size grows by the kernel's minus one, same centre pixel), numpy FFT."""
    h, w = image.shape
    kh, kw = kernel.shape
    s = (h + kh - 1, w + kw - 1)
    return np.fft.irfft2(np.fft.rfft2(image, s=s) * np.fft.rfft2(kernel, s=s), s=s)


def _add_box(cube: np.ndarray, box: np.ndarray, center) -> None:
    """Add ``box`` (band, h, w) to ``cube`` centred on the pixel nearest ``center``, clipped to it."""
    _, hh, ww = cube.shape
    h, w = box.shape[-2:]
    y0 = int(round(float(center[0]))) - h // 2
    x0 = int(round(float(center[1]))) - w // 2
    ys0, xs0, ys1, xs1 = max(y0, 0), max(x0, 0), min(y0 + h, hh), min(x0 + w, ww)
    if ys1 > ys0 and xs1 > xs0:
        cube[:, ys0:ys1, xs0:xs1] += box[:, ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]


def host_products(model: SceneModel):
    """Component stamps, fluxes and model cube of a static scene model, evaluated on the host.

    The same quantities as ``model.component_stamps()``, ``model.fluxes()`` and
    ``model()`` (to float32 rounding), without compiling a program for the
    scene's structure (see the module docstring).

    Parameters
    ----------
    model : SceneModel

    Returns
    -------
    tuple or None
        ``(groups, fluxes, cube)``: ``groups`` a list of ``([component index],
        centres (1, 2), images (1, band, h, w))`` as
        :meth:`~scarlet_xr.core.SceneModel.component_stamps`; ``fluxes``
        ``(source, band)`` (each component's spectrum times the sum of its
        box at zero offset, as ``Component.flux``); ``cube`` ``(band, y + 2 ry,
        x + 2 rx)`` float32, the model on the frame and the model PSF's
        half-widths ``model.margin`` beyond it (the light a fit's
        :func:`~scarlet_xr.core.render_observations` keeps; its central
        ``(band, y, x)`` is ``model()``). None for models with variable sources
        or ``active`` weights (use the compiled methods).
    """
    if model.num_epochs or model.active is not None or any(model.variable):
        return None
    nb = model.shape[0]
    psf = None if model.psf is None or model.psf_fft is None else np.asarray(model.psf, float)
    sources = model.sources
    groups, fluxes = [], np.zeros((len(sources), nb))
    my, mx = model.margin
    cube = np.zeros((nb, model.shape[1] + 2 * my, model.shape[2] + 2 * mx))
    shift = np.array([my, mx], float)
    units = _box_sums(model)  # each component's box sum at zero offset, as the linear solve uses
    images = morphology_images(model)
    k = 0
    for i, src in enumerate(sources):
        center = np.asarray(src.center.value, float)
        for comp in src.components:
            spec = np.asarray(comp.spectrum(), float)
            img = np.asarray(images[k], float)
            fluxes[i] += spec * units[k]
            if comp.morphology.intrinsic and psf is not None:
                img = _convolve_full(img, psf)
            box = spec[:, None, None] * img[None]
            groups.append(([k], center[None], box[None].astype(np.float32)))
            _add_box(cube, box, center + shift)
            k += 1
    return groups, fluxes, cube.astype(np.float32)


def render_on_host(cube: np.ndarray, likelihoods, margin=(0, 0)):
    """The model ``cube`` in each likelihood's observation (float32), or None if a renderer cannot.

    Parameters
    ----------
    cube : numpy.ndarray (band, y + 2 my, x + 2 mx)
        The model on the frame and ``margin`` beyond it (as :func:`host_products`).
    likelihoods : sequence of GaussianLikelihood
    margin : (int, int)
        ``(my, mx)``. Renderers that take the margin (a
        :class:`~scarlet_xr.core.ConvolutionRenderer` of that margin) get
        the whole cube, others the frame.

    Returns
    -------
    list of numpy.ndarray or None
    """
    my, mx = (int(m) for m in margin)
    frame = cube[..., my : cube.shape[-2] - my, mx : cube.shape[-1] - mx]
    out = []
    for lik in likelihoods:
        render = getattr(lik.renderer, "render_numpy", None)
        if render is None or getattr(lik, "epoch", None) is not None:
            return None
        whole = isinstance(lik.renderer, ConvolutionRenderer) and tuple(lik.renderer.margin) == (my, mx)
        out.append(np.asarray(render(cube if whole else frame), np.float32))
    return out
