"""A fitted scene's products evaluated on the host equal the compiled ones."""

import equinox as eqx
import numpy as np
import pytest

from scarlet_xr.core import (
    ConvolutionRenderer,
    FreeFormMorphology,
    GaussianLikelihood,
    GaussianMorphology,
    PointSourceMorphology,
    SceneModel,
    SersicMorphology,
    Source,
    render_observations,
)
from scarlet_xr.scene import host_products
from scarlet_xr.scene._host import render_on_host


def _psf(size=11, sigma=1.2):
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return p / p.sum()


def _scene():
    psf = _psf()
    gen = np.random.default_rng(3)
    src = []
    for i in range(6):
        # one source near the edge: its box is clipped by the frame
        c = np.array([2.3, 40.6]) if i == 5 else gen.uniform(8, 40, 2)
        spec = gen.uniform(1, 2, 3)
        if i % 3 == 0:
            src.append(Source(c, spec, GaussianMorphology(gen.uniform(1.0, 2.0), shape=15)))
        elif i % 3 == 1:
            bulge = SersicMorphology(4.0, 1.2, (0.1, -0.2), shape=21)
            disk = SersicMorphology(1.0, 3.0, (0.2, 0.1), shape=27)
            src.append(Source(c, components=[(spec, bulge), (0.5 * spec, disk)]))
        else:
            src.append(Source(c, spec, PointSourceMorphology(psf, shape=11)))
    return SceneModel(src, (3, 48, 44), psf=psf)


def test_host_products_equal_the_compiled_stamps_fluxes_cube_and_observation_images():
    model = _scene()
    groups, fluxes, cube = host_products(model)
    np.testing.assert_allclose(fluxes, np.asarray(model.fluxes()), rtol=2e-5)
    ref = np.asarray(model())
    my, mx = model.margin
    assert cube.shape == (3, 48 + 2 * my, 44 + 2 * mx)
    np.testing.assert_allclose(cube[:, my:-my, mx:-mx], ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    compiled = {}
    for members, centers, images in model.component_stamps():
        for j, k in enumerate(members):
            compiled[k] = (np.asarray(centers[j]), np.asarray(images[j]))
    assert sorted(compiled) == [g[0][0] for g in groups] == list(range(8))
    for (k,), center, image in groups:
        np.testing.assert_allclose(center[0], compiled[k][0], rtol=1e-6)
        assert image[0].shape == compiled[k][1].shape
        np.testing.assert_allclose(image[0], compiled[k][1], rtol=0, atol=2e-5 * np.abs(compiled[k][1]).max())
    # and the model in an observation with a wider PSF, through the renderer's numpy twin
    wide = np.stack([_psf(15, 1.8)] * 3)
    renderer = ConvolutionRenderer((3, 48, 44), (3, 48, 44), (0, 1, 2), wide, _psf())
    lik = GaussianLikelihood(np.zeros((3, 48, 44)), np.ones((3, 48, 44)), renderer)
    (img,) = render_on_host(cube, [lik], model.margin)
    want = np.asarray(render_observations(model, [lik])[0])
    assert img.dtype == np.float32
    np.testing.assert_allclose(img, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_models_with_active_weights_are_left_to_the_compiled_path():
    model = _scene()
    weighted = SceneModel(model.sources, model.shape, psf=np.asarray(model.psf), active=np.ones(6))
    assert host_products(weighted) is None


def test_free_form_images_are_evaluated_on_the_host_without_compiling():
    """``core.morphology_image`` of a free-form pixel array: the compiled profile's values, with
    no program compiled for its box size; other morphologies still go through their program."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    from scarlet_xr.core import FreeFormMorphology, morphology_image

    rng = np.random.default_rng(3)
    morph = FreeFormMorphology(np.abs(rng.normal(size=(17, 15))) + 1e-3)
    compiled = np.asarray(jax.jit(lambda m: m(jnp.zeros(2)))(morph))
    jax.clear_caches()
    with count_compiles("_morphology_image") as hits:
        host = np.asarray(morphology_image(morph, jnp.zeros(2)))
        assert not hits
        np.asarray(morphology_image(GaussianMorphology(1.5, shape=15), jnp.zeros(2)))
    assert len(hits) == 1, hits
    np.testing.assert_allclose(host, compiled, rtol=1e-6)
    assert host.dtype == compiled.dtype and host.shape == (17, 15)


def test_large_stacks_are_evaluated_in_batches_with_the_same_images():
    """A crowded scene's stacks of at least BATCH_IMAGES_MIN components are evaluated BATCH_IMAGES
    at a time (the last batch padded): each image equals the component's own evaluation, at its
    centre's sub-pixel offset and centred, and every component comes back in scene order."""
    import jax.numpy as jnp

    from scarlet_xr.core import morphology_image, morphology_images
    from scarlet_xr.core._model import BATCH_IMAGES, BATCH_IMAGES_MIN

    gen = np.random.default_rng(5)
    n_sersic = BATCH_IMAGES + 5  # one full batch and one padded
    src = [Source(gen.uniform(10, 70, 2), gen.uniform(1, 2, 3),
                  SersicMorphology(gen.uniform(0.8, 4), gen.uniform(1, 4), tuple(gen.uniform(-0.3, 0.3, 2)),
                                   shape=21, oversample=2))
           for _ in range(n_sersic)]
    # a small stack (per component) between them
    src[3:3] = [Source(gen.uniform(10, 70, 2), gen.uniform(1, 2, 3), GaussianMorphology(1.5, shape=15))
                for _ in range(BATCH_IMAGES_MIN - 1)]
    plain = SceneModel(src, (3, 80, 80), psf=_psf())
    for model in (plain, plain.packed()):
        for centered in (False, True):
            got = morphology_images(model, centered=centered)
            assert len(got) == len(src)
            for s, img in zip(src, got, strict=True):
                c = np.asarray(s.center.value)
                off = np.zeros(2, np.float32) if centered else (c - np.round(c)).astype(np.float32)
                ref = np.asarray(morphology_image(s.components[0].morphology, jnp.asarray(off)))
                assert img.shape == ref.shape
                np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-7 * ref.max())


def test_profiles_differing_only_in_constraints_steps_or_priors_share_one_image_program():
    """morphology_image evaluates the value form of a parametric profile: a Sersic with a prior on
    its index, one with the index fixed and one plain (the three the default path makes) are
    computed on the host (nothing compiled), Gaussians of the same three kinds compile one program
    per box size; each image is the profile's own (its eager evaluation)."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    from scarlet_xr.core import NormalPrior, Parameter, morphology_image
    from scarlet_xr.core._value_form import value_form

    off = jnp.asarray([0.2, -0.3], jnp.float32)
    prior = NormalPrior(1.5, 2.0)
    sersic = SersicMorphology(1.7, 2.5, (0.1, -0.2), shape=23, oversample=2)
    gauss = GaussianMorphology(1.7, (0.1, -0.2), shape=15)
    for base, name, programs in ((sersic, "n", 0), (gauss, "sigma", 1)):
        param = getattr(base, name)
        with_prior = eqx.tree_at(lambda m: getattr(m, name), base,  # noqa: B023
                                 Parameter(1.7, param.constraint, prior=prior))
        fixed = eqx.tree_at(lambda m: getattr(m, name), base, Parameter(1.7, fixed=True))  # noqa: B023
        jax.clear_caches()
        with count_compiles("_morphology_image") as hits:
            imgs = [np.asarray(morphology_image(m, off)) for m in (base, with_prior, fixed)]
        assert len(hits) == programs
        ref = np.asarray(base(off))
        for img in imgs:
            np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-7 * ref.max())
    # types whose images read more than parameter values are left as they are
    free = FreeFormMorphology(np.ones((5, 5)))
    assert value_form(free) is free


def test_separate_profiles_are_evaluated_in_batches_by_structure():
    """evaluate_morphologies (initialising a crowded scene): the many Gaussians of one box go
    BATCH_IMAGES per call through one program, the few of another box one by one, the Sersics are
    computed on the host in one batch (no program); every image is the profile's own at its
    offset, in the order given; a wrong offsets shape is refused."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    from scarlet_xr.core import evaluate_morphologies
    from scarlet_xr.core._model import BATCH_IMAGES

    gen = np.random.default_rng(8)
    morphs = [SersicMorphology(gen.uniform(0.8, 4), gen.uniform(1, 4), tuple(gen.uniform(-0.3, 0.3, 2)),
                               shape=19)
              for _ in range(BATCH_IMAGES + 3)]
    morphs += [GaussianMorphology(gen.uniform(1, 2), tuple(gen.uniform(-0.3, 0.3, 2)), shape=13)
               for _ in range(BATCH_IMAGES + 3)]
    morphs[2:2] = [GaussianMorphology(gen.uniform(1, 2), shape=15) for _ in range(3)]
    offsets = gen.uniform(-0.5, 0.5, (len(morphs), 2)).astype(np.float32)
    jax.clear_caches()
    with count_compiles("_stack_images") as hits, count_compiles("_morphology_image") as singles:
        got = evaluate_morphologies(morphs, offsets)
    assert len(hits) == 1  # the many Gaussians' batches share one program; the Sersics make none
    assert len(singles) == 1  # the three Gaussians of another box
    assert len(got) == len(morphs)
    for m, o, img in zip(morphs, offsets, got, strict=True):
        ref = np.asarray(m(jnp.asarray(o)))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6 * ref.max())
    with pytest.raises(ValueError, match=r"offsets must have shape \(41, 2\); got \(41,\)"):
        evaluate_morphologies(morphs, offsets[:, 0])


def test_stacks_of_pixel_profiles_sharing_a_prior_keep_it_once_with_the_same_images():
    """Free-form profiles whose pixels carry one prior object (as a learned prior's network is
    shared): the stack holds that prior once, unbatched, and each image is the component's own."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    from scarlet_xr.core import NormalPrior, Parameter, Positive, morphology_image, morphology_images
    from scarlet_xr.core._model import BATCH_IMAGES_MIN

    gen = np.random.default_rng(3)
    prior = NormalPrior(np.zeros((9, 9)), np.ones((9, 9)))
    src = []
    for _ in range(BATCH_IMAGES_MIN + 2):
        m = FreeFormMorphology(gen.uniform(0.1, 1.0, (9, 9)))
        m = eqx.tree_at(lambda mm: mm.image, m, Parameter(np.asarray(m.image.value), Positive(), prior=prior))
        src.append(Source(gen.uniform(10, 50, 2), gen.uniform(1, 2, 2), m))
    model = SceneModel(src, (2, 60, 60), psf=_psf())
    stacks = [st for st in model.packed()._groups()[1] if len(st.members) == len(src)]
    assert stacks and any(stacks[0].shared)  # the prior's arrays are held once
    jax.clear_caches()
    with count_compiles("_shared_stack_images") as hits:
        got = morphology_images(model.packed())
    assert len(hits) == 1
    for s, img in zip(src, got, strict=True):
        c = np.asarray(s.center.value)
        off = jnp.asarray(c - np.round(c), jnp.float32)
        ref = np.asarray(morphology_image(s.components[0].morphology, off))
        np.testing.assert_allclose(img, ref, rtol=1e-6)


def test_points_with_a_gaussian_model_psf_are_computed_on_the_host_as_compiled():
    """Point sources with ``sigma`` (the default path's points) are computed with numpy, nothing
    compiled, the same pixel-integrated Gaussian as their compiled image at every offset (the
    centre and the box's edges); a point given only as a PSF image is still compiled."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    from scarlet_xr.core import PointSourceMorphology, evaluate_morphologies

    yy, xx = np.mgrid[-7:8, -7:8]
    psf = np.exp(-(yy**2 + xx**2) / (2 * 0.9**2))
    points = [PointSourceMorphology(psf / psf.sum(), sigma=0.9) for _ in range(12)]
    rest = np.random.default_rng(2).uniform(-0.5, 0.5, (9, 2))
    offsets = np.array([[0.0, 0.0], [0.5, -0.5], [-0.49, 0.3], *rest], np.float32)
    jax.clear_caches()
    with count_compiles("_stack_images") as hits, count_compiles("_morphology_image") as singles:
        got = evaluate_morphologies(points, offsets)
    assert len(hits) == len(singles) == 0
    for m, o, img in zip(points, offsets, got, strict=True):
        ref = np.asarray(m(jnp.asarray(o)))
        assert img.dtype == ref.dtype and img.shape == ref.shape == (15, 15)
        np.testing.assert_allclose(img, ref, rtol=0, atol=1e-6 * ref.max())
        assert abs(img.sum() - 1) < 1e-4
    shifted = PointSourceMorphology(psf / psf.sum())
    with count_compiles("_morphology_image") as singles:
        evaluate_morphologies([shifted], offsets[:1])
    assert len(singles) == 1


def test_small_stacks_of_host_profiles_are_evaluated_in_one_host_batch(monkeypatch):
    """A survey blend's few Sersics and points (stacks below BATCH_IMAGES_MIN) are computed on
    the host a stack at a time: no per-component call, nothing copied to the device, nothing
    compiled; the images equal each component's own evaluation, packed or not."""
    import jax
    import jax.numpy as jnp
    from _compiles import count_compiles

    import scarlet_xr.core._model as model_mod
    from scarlet_xr.core import morphology_image, morphology_images
    from scarlet_xr.core._model import BATCH_IMAGES_MIN

    psf = _psf(11, 0.9)
    gen = np.random.default_rng(8)
    src = [Source(gen.uniform(8, 40, 2), gen.uniform(1, 2, 3),
                  SersicMorphology(gen.uniform(0.8, 4), gen.uniform(1, 4), tuple(gen.uniform(-0.3, 0.3, 2)),
                                   shape=21, oversample=2))
           for _ in range(BATCH_IMAGES_MIN - 2)]
    src += [Source(gen.uniform(8, 40, 2), gen.uniform(1, 2, 3), PointSourceMorphology(psf, sigma=0.9))
            for _ in range(2)]
    refs = []
    for s in src:
        c = np.asarray(s.center.value)
        refs.append(np.asarray(morphology_image(s.components[0].morphology,
                                                jnp.asarray((c - np.round(c)).astype(np.float32)))))
    plain = SceneModel(src, (3, 48, 48), psf=psf)
    calls = []
    real_single, real_put = model_mod.morphology_image, jax.device_put
    monkeypatch.setattr(model_mod, "morphology_image", lambda *a: calls.append(a) or real_single(*a))
    puts = []
    monkeypatch.setattr(jax, "device_put", lambda *a, **k: puts.append(a) or real_put(*a, **k))
    jax.clear_caches()
    with count_compiles(None) as hits:
        got = morphology_images(plain)
    assert calls == [] and puts == [] and hits == []
    for img, ref in zip(got, refs, strict=True):
        assert img.shape == ref.shape
        np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-7 * ref.max())
    packed = morphology_images(plain.packed())
    assert calls == []
    for img, ref in zip(packed, refs, strict=True):
        np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-7 * ref.max())
