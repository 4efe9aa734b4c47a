"""Entry point of ``make bench``: run every benchmark, print tables, write results.json.

Each benchmark script in this folder exposes ``main() -> dict``. This runner
calls it in a fresh Python process (fresh JAX, fresh compile caches) with
``JAX_PLATFORMS=cpu``, ``TQDM_DISABLE=1`` and ``SCARLET_XR_CACHE=off`` (no
persistent compilation cache); scripts that compare two tools start one more
process per tool themselves. A missing or failing script is reported and
skipped.

Results keys follow one convention: ``ours_<metric>`` and ``peer_<metric>``
form a table row (with ``ratio_<metric>`` = ours / peer when given, computed
otherwise); all other keys are printed as notes.

Usage::

    python benchmarks/run.py                       # all benchmarks
    python benchmarks/run.py hsc psf_unmatched     # a subset
    python benchmarks/run.py --timeout 1200 --out my_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = ["hsc", "psf_unmatched", "multi", "sample", "survey", "prior", "prior_sample",
              "accuracy", "field", "crowded"]

_CALL_MAIN = (
    "import json, runpy, sys\n"
    "res = runpy.run_path(sys.argv[1])['main']()\n"
    "enc = lambda o: o.item() if hasattr(o, 'item') else str(o)\n"
    "open(sys.argv[2], 'w').write(json.dumps(res, default=enc))\n"
)


def bench_env() -> dict:
    """Environment for benchmark processes."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TQDM_DISABLE="1", SCARLET_XR_CACHE="off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_benchmark(name: str, timeout: float) -> dict:
    """Run ``bench_<name>.py``'s ``main()`` in its own process; return its dict or an error dict."""
    script = HERE / f"bench_{name}.py"
    if not script.exists():
        return {"error": f"{script.name} not found: benchmark skipped"}
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        out = Path(tmp) / "result.json"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CALL_MAIN, str(script), str(out)],
                cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"{script.name} timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-20:]
            return {"error": f"{script.name} failed (exit code {proc.returncode})", "log": "\n".join(tail)}
        res = json.loads(out.read_text())
    if not isinstance(res, dict):
        return {"error": f"{script.name}: main() returned {type(res).__name__}, expected dict"}
    res["benchmark_wall_s"] = round(wall, 1)
    return res


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def format_table(name: str, res: dict) -> str:
    """One benchmark's results as a text table (ours | peer | ours/peer) plus notes."""
    lines = [f"== {name} " + "=" * max(0, 70 - len(name))]
    if "error" in res:
        lines.append(f"  FAILED: {res['error']}")
        if res.get("log"):
            lines.extend("    " + ln for ln in res["log"].splitlines())
        return "\n".join(lines)
    metrics = []
    for k in res:
        for prefix in ("ours_", "peer_"):
            if k.startswith(prefix) and k[len(prefix):] not in metrics:
                m = k[len(prefix):]
                scalar = all(not isinstance(res.get(f"{q}_{m}"), (list, dict)) for q in ("ours", "peer"))
                if f"ours_{m}" in res and f"peer_{m}" in res and scalar:
                    metrics.append(m)
    width = max([len(m) for m in metrics] + [6])
    lines.append(f"  {'metric':<{width}} {'ours':>14} {'peer':>14} {'ours/peer':>10}")
    for m in metrics:
        a, b = res[f"ours_{m}"], res[f"peer_{m}"]
        ratio = res.get(f"ratio_{m}")
        if ratio is None and isinstance(a, (int, float)) and isinstance(b, (int, float)) and b \
                and not isinstance(a, bool):
            ratio = a / b
        lines.append(f"  {m:<{width}} {_fmt(a):>14} {_fmt(b):>14} {_fmt(ratio):>10}")
    used = {f"{p}_{m}" for m in metrics for p in ("ours", "peer", "ratio")}
    notes = [(k, v) for k, v in res.items() if k not in used]
    for k, v in notes:
        text = _fmt(v)
        if "\n" in text:
            lines.append(f"  {k}:")
            lines.extend("    " + ln for ln in text.splitlines())
        else:
            lines.append(f"  {k}: {text}")
    return "\n".join(lines)


def machine_info() -> dict:
    """Where and when the benchmarks ran."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("jax", "scarlet2"):
        try:
            from importlib.metadata import version

            info[f"{mod}_version"] = version(mod)
        except Exception:  # noqa: BLE001 - a missing package is only reported
            info[f"{mod}_version"] = None
    return info


def main(argv=None) -> int:
    """Run the selected benchmarks; print tables; write the JSON results."""
    p = argparse.ArgumentParser(description="Run scarlet_xr's benchmarks against scarlet2.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark (default 3600)")
    p.add_argument("--out", default=str(HERE / "results.json"), help="results file")
    args = p.parse_args(argv)
    names = args.names or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}")
    info = machine_info()
    print(f"scarlet_xr benchmarks on {info['platform']}, {info['cpu_count']} CPUs, "
          f"load average {info.get('load_average_at_start')}")
    print("each benchmark runs in a fresh process (JAX_PLATFORMS=cpu, SCARLET_XR_CACHE=off)\n",
          flush=True)
    results = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        res = run_benchmark(name, args.timeout)
        results[name] = res
        print(format_table(name, res) + "\n", flush=True)
    try:
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    Path(args.out).write_text(json.dumps({"machine": info, "benchmarks": results}, indent=1,
                                         default=str) + "\n")
    failed = [n for n, r in results.items() if "error" in r]
    print(f"wrote {args.out}")
    if failed:
        print(f"benchmarks that did not run or failed: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
