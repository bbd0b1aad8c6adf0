# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo studio bench lint clean

setup: $(STAMP)

# CPU torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Three xdist workers on two cores (tests/conftest.py: the groups and their order). Test time on 2 cores:
# 201-218 s; up to 255 s for a slightly heavier version while this shared machine ran 1.7x slower. -n 4
# was slower (253 s) and late heartbeats failed a timing test; -n 2 varied more (207-320 s).
test: setup
	$(PY) -m pytest -q -n 3 tests

demo: setup
	$(PY) scripts/demo.py

# The web page with a stub and a tiny-model worker; prints the URL, runs until Ctrl-C.
studio: setup
	$(PY) -m orchestrator_stub.studio

bench: setup
	$(PY) bench/cpu_bench.py

# The chaos run (RELIABILITY.md): about 10 minutes on 2 cores, niced so it yields to interactive work.
soak: setup
	nice $(PY) bench/soak.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck run_fastwan_worker.sh .ci/run tests/support/fixtures/*.sh
	$(VENV)/bin/hadolint Dockerfile.fastwan

clean:
	rm -rf $(VENV) .demo .studio outputs test-artifacts
