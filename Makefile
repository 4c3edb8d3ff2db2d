# The README's commands. Each does its own set-up first (scripts/setup.sh: idempotent, seconds once done).
#   make demo              the whole product on the shipped test model (under 2 minutes once set up)
#   make test              lint, type check and the test suite (2 pytest-xdist workers), integration excluded
#   make test-fast         the edit-run loop: tests not marked slow or integration (under 2 minutes)
#   make test-integration  the heavy end-to-end tests (marker `integration`); .ci/run runs it after make test
#   make testmodel-rebuild retrain the shipped test model and compare its metrics with the record (15-20 min)
.PHONY: setup demo test test-fast test-integration lint typecheck testmodel-rebuild

PY := .venv/bin/python
# pytest-xdist workers: 2 fit a 2-core machine (many tests wait on brokers, subprocesses and sockets)
WORKERS ?= 2

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/edge-ssd demo

lint: setup
	$(PY) -m ruff check .

typecheck: setup
	$(PY) -m mypy

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -n $(WORKERS) -m "not integration"

test-fast: setup
	$(PY) -m pytest -n $(WORKERS) -q -m "not slow and not integration"

test-integration: setup  # exit code 5 = no test carries the marker yet
	$(PY) -m pytest -m integration || [ $$? -eq 5 ]

testmodel-rebuild: setup
	.venv/bin/edge-ssd testmodel --rebuild
