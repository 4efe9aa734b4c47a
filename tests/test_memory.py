"""Memory ceiling of the template computations on a large image (peak RSS in a subprocess).

The linear flux solve, the point-versus-extended test, the footprint chi^2
and the spectra initialisation render each template on its own box; none of
them may hold one full-frame image per source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import scarlet_xr as sx
    from scarlet_xr.core import gaussian_psf_image
    from scarlet_xr.scene._auto import _delta_chi2_point, _footprint_chi2
    from scarlet_xr.scene._linear import solve_linear
    from scarlet_xr.xr import likelihood_for

    n, bands = {size}, ["g", "r", "i", "z", "y"]
    rng = np.random.default_rng(0)
    psf = np.stack([gaussian_psf_image(s, 31) for s in (2.0, 1.9, 1.8, 1.7, 1.6)])
    centers = np.array([[n / 2, n / 2], [n / 2 + 6, n / 2 + 3], [n / 4, n / 3],
                        [3 * n / 4, n / 5], [n / 5, 4 * n / 5]])
    yy, xx = np.mgrid[-40:41, -40:41]
    data = rng.normal(0, 0.1, (5, n, n)).astype(np.float32)
    for cy, cx in centers.astype(int):
        data[:, cy - 40 : cy + 41, cx - 40 : cx + 41] += 50 * np.exp(-(yy**2 + xx**2) / 18.0)
    obs = sx.make_observation(data, variance=np.full_like(data, 0.01), psf=psf, bands=bands, name="big")
    del data
    frame = sx.frame_from_observations(obs)
    with sx.Scene(frame) as scene:
        sx.initialize_sources(frame, obs, centers, kinds="sersic")
    model = scene.model()
    liks = [likelihood_for(obs, frame)]
    sol = solve_linear(model, liks, frame.psf)
    assert np.all(np.isfinite(sol.flux)) and np.all(sol.flux[:, 0] > 0)
    comp = [[k] for k in range(len(centers))]
    delta = _delta_chi2_point(model, liks, frame, list(range(len(centers))), comp)
    assert all(d > 4 for d in delta.values())
    stats = _footprint_chi2(model, liks, frame, list(range(len(centers))))
    assert all(s[1] > 0 for s in stats.values())
    """
)


def _peak_rss_gb(code: str) -> float:
    """Run ``code`` in a fresh interpreter; return its peak RSS in GB.

    An intermediate interpreter runs it and reads ``RUSAGE_CHILDREN``, so that
    no earlier child of the test process counts.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1", SCARLET_XR_CACHE="off")
    runner = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1]], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", runner, code], check=True, env=env, timeout=120,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1e6  # kB -> GB (Linux)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kB on Linux only")
def test_template_computations_stay_local():
    """5 x 1000 x 1000: one full-frame template per source would need > 1.4 GB."""
    peak = _peak_rss_gb(_SCRIPT.format(size=1000))
    assert peak < 1.0, f"peak RSS {peak:.2f} GB"
