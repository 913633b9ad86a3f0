# vpsadmind: developer and CI entry points (see README.md).
#
#   make test     lint (ruff, mypy) + the whole test suite, after installing and starting services
#   make demo     run the demo against the local MariaDB, Mosquitto and zfs-fuse
#   make bench    run the benchmarks
#
# Variables: PYTHON (interpreter for the venv, default python3), PYTEST_ARGS (extra pytest
# arguments, e.g. make test PYTEST_ARGS='-x -k journal'), SERVICES (subset for scripts/services.sh).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
SERVICES    ?=

# scripts/services.sh checks that this interpreter can create a venv.
export PYTHON
# Unbuffered output and tracebacks on hard crashes; pip never prompts.
export PYTHONUNBUFFERED := 1
export PYTHONFAULTHANDLER := 1
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv services test test-fast lint demo bench clean soak

# Targets list `services` before `venv`: on a fresh machine services.sh also installs python3-venv.

# The venv is (re)installed only when pyproject.toml is newer than the stamp.
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

services:
	bash scripts/services.sh $(SERVICES)

lint: venv
	$(BIN)/ruff check vpsadmind tests bench
	$(BIN)/mypy

# pytest exits 5 when it collected no test: say so instead of a bare "Error 5".
# Each run gets its own temporary base directory: pytest's default one (/tmp/pytest-of-<user>) is shared by every
# run on the machine, and its clean-up of older runs fails the whole session when one of them left a zfs-fuse
# pool mounted there (a run killed half-way). The directory goes away with the run unless a pool is still in it.
define run_pytest
	base=$$(mktemp -d /tmp/vpsadmind-pytest.XXXXXX); \
	$(BIN)/pytest -q --basetemp="$$base/t" $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests (exit 5)" >&2; fi; exit $$rc; }; \
	rm -rf "$$base" 2>/dev/null || true
endef

test: services venv
	$(BIN)/ruff check vpsadmind tests bench
	$(BIN)/mypy
	$(run_pytest)

test-fast: services venv
	$(run_pytest)

demo: services venv
	$(BIN)/python -m vpsadmind.demo

bench: services venv
	$(BIN)/python -m bench

# The reliability soak (issue 9): three daemons under chains, faults and restarts; SOAK_ARGS go to it.
soak: services venv
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
