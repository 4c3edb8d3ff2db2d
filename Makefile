# The two commands of the README's quickstart. Both do their own set-up (scripts/setup.sh, idempotent).
.PHONY: setup demo test lint bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/edge-ssd demo

test: setup
	.venv/bin/python -m ruff check .
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/python -m ruff check .
