# The two README commands: `make demo` and `make test`. Both install what is
# missing (Debian packages, the virtualenv) and are fast on a second run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
CLUSTER_STATE ?= $(or $(SLURM_DOWNSTREAM_TESTCLUSTER),/tmp/slurm-downstream-testcluster)
export SLURM_DOWNSTREAM_TESTCLUSTER := $(CLUSTER_STATE)
# The Slurm versions the test clusters run (tests/cluster/up SLURM_VERSION=...): make test
# runs the per-version tests on each (make test SLURM_VERSIONS=22.05 for a quicker run).
# One cluster per version; state dirs: CLUSTER_STATE for 22.05, CLUSTER_STATE-<version>
# for the others (the same rule as tests/support/cluster.py).  demo and bench use one
# version, SLURM_VERSION (default 22.05: the host's packages, fastest to bring up).
TESTED_VERSIONS := 22.05 24.11 26.05
SLURM_VERSIONS ?= $(TESTED_VERSIONS)
export SLURM_VERSIONS
SLURM_VERSION ?= 22.05
state_of = $(if $(filter 22.05,$(1)),$(CLUSTER_STATE),$(CLUSTER_STATE)-$(1))
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

# every version of SLURM_VERSIONS, one after the other (each is fast once its root is cached)
cluster:
	@set -e; for v in $(SLURM_VERSIONS); do \
	  s=$(CLUSTER_STATE); [ "$$v" = 22.05 ] || s=$$s-$$v; \
	  SLURM_VERSION=$$v SLURM_DOWNSTREAM_TESTCLUSTER=$$s tests/cluster/up; done

# Debian's chromium, for the admin page's browser test.
browser:
	tests/browser/install

# every tested version's cluster that is up (down is a no-op for the others)
cluster-down:
	@set -e; for v in $(TESTED_VERSIONS); do \
	  s=$(CLUSTER_STATE); [ "$$v" = 22.05 ] || s=$$s-$$v; \
	  SLURM_DOWNSTREAM_TESTCLUSTER=$$s tests/cluster/down; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP) browser
	$(VENV)/bin/pytest -q -m "not cluster"

test: $(STAMP) browser cluster
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# make demo SLURM_VERSION=24.11 runs the demo on that version's cluster
demo: $(STAMP)
	$(MAKE) cluster SLURM_VERSIONS=$(SLURM_VERSION)
	SLURM_DOWNSTREAM_TESTCLUSTER=$(call state_of,$(SLURM_VERSION)) tests/demo/up

# Benchmarks against the real test cluster (a few minutes; not part of make test).
bench: $(STAMP)
	$(MAKE) cluster SLURM_VERSIONS=$(SLURM_VERSION)
	SLURM_DOWNSTREAM_TESTCLUSTER=$(call state_of,$(SLURM_VERSION)) $(VENV)/bin/python -m bench

demo-stop:
	-SLURM_DOWNSTREAM_TESTCLUSTER=$(call state_of,$(SLURM_VERSION)) tests/demo/down
	SLURM_DOWNSTREAM_TESTCLUSTER=$(call state_of,$(SLURM_VERSION)) tests/cluster/down

clean:
	rm -rf $(VENV) *.egg-info
