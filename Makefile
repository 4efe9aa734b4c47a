# Set-up contract: `make demo` and `make test` do all set-up on a fresh machine
# with Python 3.11 and make.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
UV_VERSION := 0.13.9
# uv installs the pinned set in ~10 s (pip takes ~1 min); both honour the constraints file.
# --compile-bytecode writes the .pyc files at install time, as pip does: without them every process
# compiles the sources it imports (jax, xarray, astropy, ...) where bytecode is not written
# (PYTHONDONTWRITEBYTECODE, read-only installs), seconds per process
INSTALL := $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY)
CONSTRAINTS := constraints-py311.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | cksum | cut -d' ' -f1)
export TQDM_DISABLE ?= 1

.PHONY: install demo test bench bench-gpu docs clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(INSTALL) -c $(CONSTRAINTS) -e ".[test,sample,multi,survey,viz,widgets]"
	$(PY) -m compileall -q scarlet_xr
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scarlet-xr demo --out demo_output

# tests + doctests + every notebook (nbmake executes them; outputs stay stripped)
# No JAX compile cache in the tests (SCARLET_XR_CACHE=off, also set by tests/conftest.py): with one,
# a worker aborted inside XLA's compiler. A test that hangs is stopped after 15 min with every
# thread's stack (pytest-timeout), not the whole CI; a crashed worker ends the run at once
# (--max-worker-restart=0): after a crash and a restart xdist once waited forever, tests done.
test: $(STAMP)
	JAX_PLATFORMS=cpu SCARLET_XR_CACHE=off $(PY) -m pytest -n 2 --dist loadfile --max-worker-restart=0 -q --timeout=900 --durations=25 \
	    --nbmake --nbmake-timeout=600 tests scarlet_xr notebooks

bench: $(STAMP)
	$(INSTALL) -c $(CONSTRAINTS) -e ".[bench]"
	JAX_PLATFORMS=cpu SCARLET_XR_CACHE=off $(PY) benchmarks/run.py $(BENCH)

# survey throughput on the accelerator JAX finds (benchmarks/bench_gpu.py; the CPU when there is none):
# no JAX_PLATFORMS=cpu here. On an NVIDIA machine add a CUDA jaxlib to .venv first, e.g.
#   .venv/bin/uv pip install --python .venv/bin/python "jax[cuda12]==0.10.2"   (the jax of constraints-py311.txt)
# (arguments: make bench-gpu BENCH_GPU="n_blends n_peer", default 200 20)
bench-gpu: $(STAMP)
	$(INSTALL) -c $(CONSTRAINTS) -e ".[bench]"
	SCARLET_XR_CACHE=off $(PY) benchmarks/bench_gpu.py $(BENCH_GPU)

# offline build: notebooks are executed by myst-nb, plots use inline bokeh resources
docs: $(STAMP)
	$(INSTALL) -c $(CONSTRAINTS) -e ".[docs,widgets]"
	JAX_PLATFORMS=cpu $(VENV)/bin/sphinx-build -b html docs docs/_build/html

clean:
	rm -rf $(VENV) demo_output docs/_build
