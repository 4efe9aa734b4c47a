"""Each pixel's nearest source centre: the frame-wide map agrees with the per-window rule (scene._init)."""

import numpy as np
import pytest

from scarlet_xr.scene._init import _nearest_centres, _owned


def _brute(centers, shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    return np.argmin(d, axis=0)  # ties: the first listed


@pytest.mark.parametrize("rounded", [False, True])
def test_map_and_windows_agree_with_brute_force(rounded):
    rng = np.random.default_rng(7)
    for _ in range(25):
        n = int(rng.integers(2, 60))
        shape = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        c = rng.uniform(0, min(shape), (n, 2))
        if rounded:  # integer centres: many pixels equidistant from two, three or four centres
            c = np.round(c)
            c[1] = c[0]
        truth = _brute(c, shape)
        labels = _nearest_centres(c, shape)
        np.testing.assert_array_equal(labels, truth)
        for i in rng.choice(n, size=min(n, 8), replace=False):
            cy, cx = np.clip(c[i].astype(int), 0, np.array(shape) - 1)
            ys = slice(max(cy - 12, 0), min(cy + 13, shape[0]))
            xs = slice(max(cx - 12, 0), min(cx + 13, shape[1]))
            np.testing.assert_array_equal(_owned(c, i, ys, xs), truth[ys, xs] == i)
            np.testing.assert_array_equal(_owned(c, i, ys, xs, labels=labels), truth[ys, xs] == i)
