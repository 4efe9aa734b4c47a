"""jaxtyping shapes on core's public array functions, checked at runtime (issue 13).

The annotations are inert in the library (no import hook, no cost); here each function is
wrapped with ``jaxtyping.jaxtyped(typechecker=beartype)`` and called on arrays of the right
and of the wrong shape: the right ones pass, the wrong ones are refused.
"""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

from scarlet_xr import core

# (compiled functions are checked through their Python function: inspect.unwrap)
checked = {name: jaxtyped(typechecker=beartype)(inspect.unwrap(getattr(core, name))) for name in (
    "fourier_shift", "convolve_fft", "gaussian_psf_image", "check_psf", "difference_kernel_fft",
    "psf_core_width", "starlet_transform", "starlet_reconstruct", "morphology_image", "score_surrogate",
)}


def test_every_checked_function_is_annotated_with_shapes():
    for name in checked:
        hints = inspect.get_annotations(inspect.unwrap(getattr(core, name)), eval_str=True)
        shaped = [h for h in hints.values() if hasattr(h, "dim_str") or "jaxtyping" in str(h)]
        assert shaped, f"{name} has no jaxtyping annotation"


def test_right_shapes_pass():
    psf = core.gaussian_psf_image(1.5, 11)
    assert checked["gaussian_psf_image"](1.5, 11).shape == (11, 11)
    cube = np.stack([psf, psf])
    assert checked["check_psf"](cube).shape == (2, 11, 11)
    assert checked["psf_core_width"](cube).shape == (2,)
    img = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16)), jnp.float32)
    assert checked["fourier_shift"](img, jnp.array([0.3, -0.2])).shape == (2, 16, 16)
    kfft = checked["difference_kernel_fft"](cube * 0 + core.gaussian_psf_image(2.0, 11), psf, (32, 32))
    assert kfft.shape == (2, 32, 17)
    assert checked["convolve_fft"](img, jnp.asarray(kfft), (32, 32)).shape == (2, 16, 16)
    coeffs = checked["starlet_transform"](img[0])
    assert checked["starlet_reconstruct"](coeffs).shape == (16, 16)
    m = core.GaussianMorphology(1.5, shape=11)
    assert checked["morphology_image"](m, jnp.zeros(2)).shape == (11, 11)
    x = jnp.ones(3)
    assert checked["score_surrogate"](x, -x).shape == ()


@pytest.mark.parametrize("call", [
    # a shift needs (dy, dx)
    lambda: checked["fourier_shift"](jnp.zeros((16, 16)), jnp.zeros(3)),
    # the image is at least 2-D
    lambda: checked["fourier_shift"](jnp.zeros(16), jnp.zeros(2)),
    # one PSF image per band, each 2-D
    lambda: checked["psf_core_width"](np.ones(5)),
    # the difference kernel of a (band, h, w) PSF against a 2-D model PSF
    lambda: checked["difference_kernel_fft"](np.ones((11, 11)), np.ones((11, 11)), (32, 32)),
    # the starlet transform takes one image
    lambda: checked["starlet_transform"](jnp.zeros((2, 16, 16))),
    # a score has the shape of its variable
    lambda: checked["score_surrogate"](jnp.ones(3), jnp.ones(4)),
    # a kernel spectrum is complex
    lambda: checked["convolve_fft"](jnp.zeros((16, 16)), jnp.zeros((32, 17)), (32, 32)),
])
def test_wrong_shapes_are_refused(call):
    with pytest.raises(TypeCheckError):
        call()


def test_dtypes_are_chosen_explicitly_not_by_the_global_x64_flag():
    """Models, renderers and likelihoods are float32 / complex64 whether or not JAX's 64-bit flag is
    on (core.default_float); a fit of a model built with the flag on runs and stays float32."""
    import jax

    from scarlet_xr.core import (
        ConvolutionRenderer,
        GaussianLikelihood,
        GaussianMorphology,
        PointSourceMorphology,
        SceneModel,
        Source,
        gaussian_psf_image,
    )
    from scarlet_xr.infer import fit

    def build():
        psf = gaussian_psf_image(1.2, 11)
        srcs = [Source((10.2, 9.7), np.ones(2), GaussianMorphology(1.5)),
                Source((5.0, 14.0), np.ones(2), PointSourceMorphology(psf))]
        model = SceneModel(srcs, (2, 21, 21), psf=psf)
        obs_psf = np.stack([gaussian_psf_image(1.6, 11)] * 2)
        rng = np.random.default_rng(0)
        lik = GaussianLikelihood(rng.normal(0, 0.1, (2, 21, 21)), np.full((2, 21, 21), 100.0),
                                 ConvolutionRenderer((2, 21, 21), (2, 21, 21), (0, 1), obs_psf, psf))
        return model, lik

    def dtypes(tree):
        return {str(x.dtype) for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")
                and (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.complexfloating))}

    assert core.default_float() == jnp.float32 and core.default_complex() == jnp.complex64
    with jax.enable_x64(True):
        model64, lik64 = build()
        assert dtypes((model64, lik64)) == {"float32", "complex64"}
        assert model64().dtype == jnp.float32
    model, lik = build()
    assert dtypes((model, lik)) == {"float32", "complex64"}
    np.testing.assert_array_equal(np.asarray(model64()), np.asarray(model()))
    fitted, history = fit(model64, [lik64], max_steps=20, progress=False)
    assert dtypes(fitted) == {"float32", "complex64"} and np.isfinite(history.loss).all()
    assert not jax.config.jax_enable_x64
