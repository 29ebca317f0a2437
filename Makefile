# airflow-pgmigrate: every target sets up what it needs (virtualenv and installs) on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv lint test test-slow test-ddl test-pure-python test-fast test-faults test-peer test-real-airflow demo demo-ui clean

$(STAMP): pyproject.toml hatch_build.py airflow_pgmigrate/engine/incremental/tuplecodec.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check airflow_pgmigrate tests dags demo bench hatch_build.py
	$(BIN)/mypy

# Lint, type check, unit tests, and integration tests against real PostgreSQL servers and Airflow (dag.test()).
# The slow suites have their own targets, which .ci/run runs after this one: the pgcopydb-style peer scenarios
# (test-peer), tests that take longer than about 20 s (test-slow), the real Airflow deployment (test-real-airflow).
# It lists its 25 slowest tests: one that grows past about 20 s moves to the slow marker (the target stays < 15 min).
test: lint
	$(BIN)/pytest -q -p no:cacheprovider -m "not real_airflow and not peer and not slow and not ddl" --durations=25

# Tests that take longer than about 20 s each (long throttled windows, waits for the caps).
test-slow: venv
	$(BIN)/pytest -q -p no:cacheprovider -m "slow and not real_airflow and not peer"

# DDL replicated during the sync (incremental.ddl: replicate): every supported statement, the edges, the rights.
test-ddl: venv
	$(BIN)/pytest -q -p no:cacheprovider -m "ddl and not slow"

# The incremental sync's pure Python loops (what runs where tuplecodec.c could not be built), on the suites that
# drive them; everything else runs the C loops.
test-pure-python: venv
	PGMIGRATE_PURE_PYTHON=1 $(BIN)/pytest -q -p no:cacheprovider tests/unit tests/integration/test_incremental.py \
		tests/integration/test_apply_fast_paths.py

# A real Airflow (scheduler, dag processor, triggerer, API server) driven through its REST API, and Debian's Chromium
# (headless) on its UI; screenshots and component logs in $${PGMIGRATE_TEST_ARTIFACTS:-/tmp/pgmigrate-artifacts}.
test-real-airflow: venv
	$(BIN)/pytest -q -p no:cacheprovider -m real_airflow

# Only the fault-injection, abuse and security suite (its fast part is in `make test`).
test-faults: venv
	$(BIN)/pytest -q -p no:cacheprovider -m hardening

# The pgcopydb-style peer scenarios (tests/peer; .ci/run runs them after `make test`).
test-peer: venv
	$(BIN)/pytest -q -p no:cacheprovider -m peer

test-fast: venv
	$(BIN)/pytest -q -p no:cacheprovider -m "not integration"

# A migration on local servers, driven through Airflow (see README.md).
demo: venv
	$(BIN)/python demo/run_demo.py

# The same migration in a real Airflow with its UI on http://localhost:8080: answer the cutover question in the
# browser; Ctrl-C stops every process it started.
demo-ui: venv
	$(BIN)/python demo/run_demo.py --ui

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
