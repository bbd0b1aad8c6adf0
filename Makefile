# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TORCH_VERSION := 2.13.0
# One set of versions for `make setup`, CI and the image (Dockerfile.fastwan, Dockerfile.stub); `make lock`
# rewrites it.
CONSTRAINTS := constraints.txt

.PHONY: setup test test-postgresql demo studio bench quality train-miniature lint lock container-test clean

setup: $(STAMP)

# CPU torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

# The newest versions pyproject.toml's ranges allow, resolved in a fresh virtualenv, written to constraints.txt
# (torch without its local tag, so that the CPU wheel here and the CUDA build in the image both match). Then:
# review the diff, `make test`, `make container-test`, commit.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip setuptools
	.lock-venv/bin/pip install -q torch==$(TORCH_VERSION) '.[test,stub]'
	{ echo '# Every package `make setup`, CI and the images install, at one version each. Written by `make lock`.'; \
	  .lock-venv/bin/pip freeze --all --exclude worker-app-fastwan | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(CONSTRAINTS)
	rm -rf .lock-venv

# Three xdist workers on two cores (tests/conftest.py: the groups and their order). Test time on 2 cores,
# 2026-12-08: 271-273 s (about 460 CPU-seconds: the cores are busy 84 % of the run). -n 4 was slower in the
# same session (275 s, 490 CPU-seconds); earlier, -n 2 varied more (207-320 s).
test: setup
	$(PY) -m pytest -q -n 3 tests

# Every stub and store test again on a real PostgreSQL server the tests start (Debian's `postgresql`
# packages); `make test` runs their SQLite half (tests/support/databases.py says why).
test-postgresql: setup
	STUB_TEST_BACKENDS=postgresql $(PY) -m pytest -q -n 3 -m postgresql tests

demo: setup
	$(PY) scripts/demo.py

# The web page with a stub and a tiny-model worker; prints the URL, runs until Ctrl-C.
studio: setup
	$(PY) -m orchestrator_stub.studio

bench: setup
	$(PY) bench/cpu_bench.py

# Does the generation path still make the video the prompt asks for? The miniature model over its whole world
# (docs/miniature.md): an accuracy table, exit 1 below the issue's bar. 2-8 minutes on 2 cores.
quality: setup
	nice $(PY) bench/miniature_eval.py

# Retrain the miniature from nothing into worker_app_fastwan/miniature/weights (about 37 minutes on 2 quiet cores).
train-miniature: setup
	nice $(PY) -m worker_app_fastwan.miniature.train

# The chaos runs (RELIABILITY.md), niced so they yield to interactive work: about 10 minutes each on 2 cores,
# the stub on SQLite, then on PostgreSQL as two replicas behind the proxy (one killed and restarted).
soak: setup
	nice $(PY) bench/soak.py
	nice $(PY) bench/soak.py --db postgresql

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck run_fastwan_worker.sh .ci/run tests/support/fixtures/*.sh container_test/*.sh
	$(VENV)/bin/hadolint Dockerfile.fastwan Dockerfile.stub

# Builds both images on this machine's Docker engine (started here when none runs) and runs them as users do:
# container_test/run.py lists the checks. Needs root (or a running engine) and debootstrap; not part of `test`.
container-test: setup
	$(PY) -m container_test.run

clean:
	rm -rf $(VENV) .demo .studio outputs test-artifacts .docker-ci .lock-venv
