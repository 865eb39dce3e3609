# The two README commands: `make demo` and `make test`. Both install what is
# missing (Debian packages, the virtualenv) and are fast on a second run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
CLUSTER_STATE ?= $(or $(SLURM_DOWNSTREAM_TESTCLUSTER),/tmp/slurm-downstream-testcluster)
export SLURM_DOWNSTREAM_TESTCLUSTER := $(CLUSTER_STATE)
# Slurm forgets finished jobs after MinJobAge (default 300 s); the test cluster
# keeps them 10 s so that tests see purged jobs in reasonable time.
export MIN_JOB_AGE ?= 10

.PHONY: all venv browser cluster cluster-down test unit lint demo demo-stop bench clean

all: test

$(STAMP): pyproject.toml config/constraints.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c config/constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

cluster:
	tests/cluster/up

# Debian's chromium, for the admin page's browser test.
browser:
	tests/browser/install

cluster-down:
	tests/cluster/down

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP) browser
	$(VENV)/bin/pytest -q -m "not cluster"

test: $(STAMP) browser cluster
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

demo: $(STAMP) cluster
	tests/demo/up

# Benchmarks against the real test cluster (a few minutes; not part of make test).
bench: $(STAMP) cluster
	$(VENV)/bin/python -m bench

demo-stop:
	-tests/demo/down
	tests/cluster/down

clean:
	rm -rf $(VENV) *.egg-info
