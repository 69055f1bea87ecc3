# Common tasks; see CONTRIBUTING.md. The suite sets up .venv itself (tests/run.sh).
PY ?= .venv/bin/python

.PHONY: test lint bench proto train

test:
	bash tests/run.sh

lint:
	.venv/bin/ruff check service tests models
	.venv/bin/mypy service models/trainer

bench:
	.venv/bin/gnbsched bench perf --out .
	.venv/bin/gnbsched bench validate --out .
	.venv/bin/gnbsched bench student --out .

proto:
	$(PY) proto/generate.py

train:
	.venv/bin/gnbsched train all
