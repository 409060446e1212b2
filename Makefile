# `make test` and `make run` work on a fresh machine with only python3:
# each creates .venv and installs the package with its dev extras when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run lint bench clean

# PYTHONWARNINGS: setuptools' build backend prints a banner about editable installs (a
# UserWarning) that recent pip shows even with --quiet; a first `make run` should not.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check blobsync tests

# Two pytest processes (pytest-xdist), each with its own PostgreSQL cluster and S3 server:
# most tests wait on servers and subprocesses, so two run in ~60% of the time of one
# (8.4 instead of 13.5 minutes on a 2-core machine). TEST_WORKERS=0 runs them in-process.
TEST_WORKERS ?= 2

test: lint
	scripts/ensure-postgres.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Serves on 127.0.0.1:2424 with SQLite and files in ./blobsync-data; the first run makes a
# demo user (kept in ./blobsync-data/demo-user.txt) and prints a client command to paste.
run: $(STAMP)
	$(VENV)/bin/blobsync server --demo

# The benchmark also needs matplotlib (the bench extra); installed on first use.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Not part of `make test`: ~15 minutes. BENCH_ARGS=--quick for a smoke test.
bench: $(BENCH_STAMP)
	scripts/ensure-restic.sh
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
