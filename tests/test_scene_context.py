"""Scene as a context manager: isolation between scenes and threads."""

import threading

import numpy as np
import pytest

import scarlet_xr as sx


def _source(y, x):
    return sx.Source((y, x), np.array([1.0, 2.0]), sx.GaussianMorphology(1.5))


def test_sources_join_the_active_scene_only():
    frame = sx.Frame(["g", "r"], (31, 31))
    with sx.Scene(frame) as a:
        _source(10, 10)
        _source(12, 20)
    with sx.Scene(frame) as b:
        _source(15, 15)
    outside = _source(5, 5)
    assert len(a) == 2 and len(b) == 1
    assert outside not in a.sources and outside not in b.sources
    with a:
        _source(20, 20)
    assert len(a) == 3 and len(b) == 1


def test_nested_scenes_restore_the_outer_scene():
    frame = sx.Frame(["g", "r"], (31, 31))
    with sx.Scene(frame) as outer:
        _source(10, 10)
        with sx.Scene(frame) as inner:
            _source(11, 11)
        _source(12, 12)
    assert len(outer) == 2 and len(inner) == 1


def test_two_threads_do_not_interfere():
    frame = sx.Frame(["g", "r"], (31, 31))
    results = {}
    barrier = threading.Barrier(2)

    def build(name, n):
        with sx.Scene(frame) as scene:
            for i in range(n):
                _source(5 + i, 5 + i)
                if i == 0:
                    barrier.wait(timeout=10)
        results[name] = len(scene)

    threads = [threading.Thread(target=build, args=(k, n)) for k, n in (("a", 3), ("b", 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"a": 3, "b": 5}


def test_band_count_mismatch_is_rejected():
    frame = sx.Frame(["g", "r", "i"], (31, 31))
    with pytest.raises(ValueError, match="source spectrum has 2 bands; the frame has 3"):
        with sx.Scene(frame):
            _source(10, 10)
