# make run: set up .venv (if missing) and run the embedded default cycle.
# make test: set up .venv (if missing) and run the whole test suite (what CI runs).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# --no-compile: pip would byte-compile every module of ray and torch (~2 of a ~5 min install); Python
# compiles the ones a run imports, on first import, and caches them: unless PYTHONDONTWRITEBYTECODE is set, as
# on our machines, where every process (each Ray worker) compiled ray and torch again. Unexported here:
# pytest tests/test_cycle.py -k "end_to_end or bad_input" took 96.8 s with it, 56.5 s without (writing the
# caches), 44.1 s with them written (2026-12-06).
unexport PYTHONDONTWRITEBYTECODE
# torch/torchvision pinned to the wheels on our machines' disk (DEVELOPERS.md); a bare `torch` would download GBs.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
export RAY_AUTH_MODE ?= disabled
# CIFAR-10 for cifar10 runs and benchmarks: our machines' local copy when there is one (data/builtin.py);
# without it the library downloads it once into ~/.cache/ray_al.
export RAY_AL_CIFAR10 ?= $(wildcard $(abspath ../shared/datasets/cifar10))

.PHONY: install run test test-labelstudio bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[cpu,test]' -c constraints.txt $(TORCH_PIN)
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m ray_al.cycle $(ARGS)

# Two pytest workers, each taking whole test modules in collection order (module-scoped Ray fixtures stay in
# one process; tests/conftest.py puts the longest first): Ray start-up leaves a 2-core box partly idle.
PYTEST_WORKERS ?= 2
# The real Label Studio round trip runs in make test: Label Studio lives in its own venv (its Django pins clash
# with ours), installed once beside .venv (59 s, 2026-12-06); its test's first start migrates a fresh SQLite
# database (~30 s idle). `make test-labelstudio` runs that test alone.
LSVENV ?= .lsvenv
# sentry-sdk 3.0.0 (on the index by 2026-12-07) refuses label-studio 1.23.2's `send_default_pii` option and
# Label Studio exits at start (git clone + .ci/run of 399931f): keep sentry-sdk 2.x beside it
LS_PIN := label-studio==1.23.2 "sentry-sdk<3"
LS_STAMP := $(LSVENV)/.installed
export RAY_AL_LABEL_STUDIO := $(abspath $(LSVENV))/bin/label-studio

$(LS_STAMP):
	test -x $(LSVENV)/bin/python || $(PYTHON) -m venv $(LSVENV)
	$(LSVENV)/bin/pip install --quiet --disable-pip-version-check $(LS_PIN)
	touch $(LS_STAMP)

test: $(STAMP) $(LS_STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-labelstudio: $(STAMP) $(LS_STAMP)
	$(PY) -m pytest -q -m labelstudio tests/test_labelstudio.py

clean:
	rm -rf $(VENV) $(LSVENV) runs .pytest_cache
