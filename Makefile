# samplewise: every target a verb. `make sweep` and `make test` install what they need first.
PYTHON ?= python3
VENV   ?= .venv
# Pinned first so pip never resolves an unpinned torch (the newest CUDA build, several GB).
# On a CUDA machine: make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH  ?= torch==2.13.0
SWEEP  ?= sweeps/quickstart.yaml
# make test runs the suite in 2 pytest-xdist workers: its integration tests spend much of their
# time starting processes and waiting on them, so 2 workers on 2 cores took 431 s against 664 s.
TEST_WORKERS ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# PostgreSQL's driver (the project's optional extra `postgres`), for make up BACKEND=postgres, an
# MLFLOW_BACKEND_STORE_URI=postgresql://..., and the tests that run MLflow on PostgreSQL.
PG_STAMP := $(VENV)/.installed-postgres
NEEDS_PG := $(if $(filter postgres,$(BACKEND))$(filter postgresql%,$(MLFLOW_BACKEND_STORE_URI)),$(PG_STAMP))

.PHONY: install sweep test test-fast lint format bench bench-adaptive bench-store bench-quick validate export transfer compare rules batch verify ui ui-check browser-deps up down status logs resume clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(PG_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres]"
	touch $(PG_STAMP)

install: $(STAMP)  ## create .venv and install samplewise (skipped when nothing changed)

sweep: install  ## run a sweep: make sweep SWEEP=sweeps/x.yaml
	$(BIN)/samplewise sweep $(SWEEP)

test: install $(PG_STAMP)  ## run the test suite (TEST_WORKERS=1: in one process)
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup) $(PYTEST_ARGS)

lint: install  ## ruff (lint and format check; make format rewrites) and mypy (types)
	$(BIN)/ruff check samplewise services search_spaces tests
	$(BIN)/ruff format --check samplewise services search_spaces tests
	$(BIN)/mypy

format: install  ## rewrite the code in the project's format and fix what ruff can
	$(BIN)/ruff format samplewise services search_spaces tests
	$(BIN)/ruff check --fix samplewise services search_spaces tests

test-fast: install  ## the tests that need no real Ray or MLflow server (about a minute)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: install $(PG_STAMP)  ## measure samplewise against its goals (15-21 min on 2 cores); writes BENCHMARKS.md
	$(BIN)/samplewise bench

bench-adaptive: install  ## the adaptive searcher vs the full SGD and Adam grids alone (about 10 min); writes BENCHMARKS-adaptive.md
	$(BIN)/samplewise bench --only adaptive

bench-store: install $(PG_STAMP)  ## export and status over a 100,000-run store, MLflow server on SQLite and on PostgreSQL; writes BENCHMARKS-store.md
	$(BIN)/samplewise bench --only store

bench-quick: install $(PG_STAMP)  ## every bench measurement at toy size: a smoke run of the whole bench (about two minutes)
	$(BIN)/samplewise bench --quick

validate: install  ## check a spec without running it
	$(BIN)/samplewise validate $(SWEEP)

export: install  ## write exports/<sweep>.json and .yaml from MLflow
	$(BIN)/samplewise export $(SWEEP)

transfer: install  ## train the answer at batch sizes the sweep did not train: make transfer SWEEP=...
	$(BIN)/samplewise transfer $(SWEEP)

compare: install  ## compare batch-size / LR schedules of a sweep: make compare SWEEP=...
	$(BIN)/samplewise compare $(SWEEP)

RULES := sqrt sqrt_halflife sde
rules: install  ## sweep Adam's three batch-size rules on the transformer, check each at held-out B, print the table (16.5 min on 2 cores)
	for rule in $(RULES); do \
	  $(BIN)/samplewise sweep sweeps/adamw_rule_$$rule.yaml && $(BIN)/samplewise export --no-test sweeps/adamw_rule_$$rule.yaml || exit 1; \
	done
	$(BIN)/samplewise table $(foreach rule,$(RULES),exports/adamw_rule_$(rule).json)

EXPORT ?= exports/quickstart.json
batch: install  ## the batch size for a goal, with its LR and settings: make batch EXPORT=... [SAMPLE_BUDGET=N | STEP_BUDGET=N]
	$(BIN)/samplewise batch $(EXPORT) $(if $(SAMPLE_BUDGET),--sample-budget $(SAMPLE_BUDGET)) $(if $(STEP_BUDGET),--step-budget $(STEP_BUDGET)) $(if $(OPTIMIZER),--optimizer $(OPTIMIZER)) $(if $(REDUCTION),--reduction $(REDUCTION))

verify: install  ## check the sum/mean equivalences the scaling rules rely on
	$(BIN)/samplewise verify

ui: install  ## MLflow UI on the local store, bound to 127.0.0.1
	$(BIN)/samplewise ui

ui-check: install  ## open the sweep's runs in headless Chromium, save a screenshot: make ui-check SWEEP=...
	$(BIN)/samplewise ui-check $(SWEEP)

browser-deps:  ## install Debian's chromium and chromium-driver for ui-check (needs root)
	apt-get update && apt-get install -y chromium chromium-driver

up: install $(NEEDS_PG)  ## start a local MLflow server (BACKEND=sqlite|postgres) and Ray head (127.0.0.1) in the background
	$(BIN)/samplewise up $(if $(BACKEND),--backend $(BACKEND)) $(if $(BIND_HOST),--host $(BIND_HOST)) $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT)) $(if $(RAY_PORT),--ray-port $(RAY_PORT)) $(if $(PG_PORT),--pg-port $(PG_PORT))

down: install  ## stop exactly what make up started
	$(BIN)/samplewise down

status: install  ## show local services and sweeps in progress
	$(BIN)/samplewise status

logs: install  ## follow a detached sweep: make logs SWEEP=sweeps/x.yaml
	$(BIN)/samplewise logs $(SWEEP)

resume: install  ## continue a sweep whose driver died: make resume SWEEP=sweeps/x.yaml
	$(BIN)/samplewise resume $(SWEEP)

clean:  ## remove local results (MLflow store, Ray results, exports); keeps .venv
	rm -rf mlflow.db mlflow.db.lock mlartifacts .samplewise exports
