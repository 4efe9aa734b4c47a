"""Small stacks of profiles move up to the next box size their kind uses (scene._boxes)."""

import numpy as np
import pytest

from scarlet_xr.core import Parameter, PointSourceMorphology, SceneModel, SersicMorphology, Source
from scarlet_xr.scene._boxes import MERGE_BOX_PIXELS, consolidated_boxes

BANDS = 2
SHAPE = (BANDS, 120, 120)


def _sersic(box, r_e=2.0, n=1.5, fixed_n=False):
    n = Parameter(n, fixed=True) if fixed_n else n
    return SersicMorphology(n, r_e, (0.1, -0.05), shape=box, oversample=2)


def _scene(boxes, extra=()):
    rng = np.random.default_rng(3)
    sources = [Source(tuple(rng.uniform(20, 100, 2)), np.full(BANDS, 100.0), _sersic(b)) for b in boxes]
    return SceneModel(list(sources) + list(extra), SHAPE)


def _boxes(model):
    return [c.morphology.shape[0] for s in model.sources for c in s.components]


def test_small_stacks_move_up_and_large_ones_stay():
    model = _scene([15, 15, 21, 59, 59, 59])
    # 15 -> 21 adds 2 x (21^2 - 15^2) = 432 pixels, 21 -> 59 then 3 x (59^2 - 21^2) = 9120
    assert _boxes(consolidated_boxes(model)) == [59] * 6
    assert _boxes(consolidated_boxes(model, max_pixels=1000)) == [21, 21, 21, 59, 59, 59]
    assert _boxes(consolidated_boxes(model, max_pixels=100)) == [15, 15, 21, 59, 59, 59]
    # many sources on a small box: moving them costs more than the budget, they keep it
    crowd = _scene([21] * 40 + [59])
    assert _boxes(consolidated_boxes(crowd)) == [21] * 40 + [59]
    assert 40 * (59**2 - 21**2) > MERGE_BOX_PIXELS


def test_nothing_to_move_returns_the_same_model():
    model = _scene([35, 35, 35])
    assert consolidated_boxes(model) is model


def test_kinds_stay_apart_and_points_are_untouched():
    point = Source((60.0, 60.0), np.full(BANDS, 50.0), PointSourceMorphology(np.ones((9, 9)) / 81.0))
    bulge = Source((40.0, 70.0), np.full(BANDS, 80.0), _sersic(21, r_e=1.0, n=4.0, fixed_n=True))
    model = _scene([15, 45], extra=[point, bulge])
    out = consolidated_boxes(model)
    # the free-index profile on 15 joins the one on 45; the fixed-index bulge has no larger
    # box of its kind and keeps 21; the point keeps its PSF box
    assert _boxes(out) == [45, 45, 9, 21]
    assert out.sources[3].components[0].morphology.n.fixed


def test_a_moved_profile_renders_the_same_light():
    model = _scene([15, 59])
    out = consolidated_boxes(model)
    small = np.asarray(model.sources[0].components[0].morphology(np.zeros(2)))
    big = np.asarray(out.sources[0].components[0].morphology(np.zeros(2)))
    assert big.shape == (59, 59) and small.shape == (15, 15)
    inner = big[22:37, 22:37]
    np.testing.assert_allclose(inner, small, rtol=1e-5, atol=1e-7)
    # the larger box holds more of the unit-flux profile, never less
    assert small.sum() < big.sum() <= 1.0 + 1e-6
    # same parameters (values, constraints, sampling)
    src0, new0 = model.sources[0].components[0].morphology, out.sources[0].components[0].morphology
    for name in ("n", "r_e", "ellipticity"):
        old_p, new_p = getattr(src0, name), getattr(new0, name)
        np.testing.assert_array_equal(np.asarray(new_p.raw), np.asarray(old_p.raw))
        assert new_p.constraint == old_p.constraint
    assert new0.oversample == src0.oversample
    full_old, full_new = np.asarray(model()), np.asarray(out())
    # the scene only gains the wings the small box cut off
    assert full_new.sum() > full_old.sum()
    assert np.all(full_new >= full_old - 1e-5 * full_old.max())


@pytest.mark.parametrize("boxes", [[9, 11, 15, 21, 27, 35], [27, 121]])
def test_boxes_never_shrink_nor_outgrow_their_kind(boxes):
    model = _scene(boxes)
    new = _boxes(consolidated_boxes(model))
    assert all(b >= a for a, b in zip(boxes, new, strict=True))
    assert max(new) == max(boxes)
