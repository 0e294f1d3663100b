# The two commands of the README:
#   make lab   - create .venv if missing, then start JupyterLab on my-notebooks/, a git-ignored
#                working copy of notebooks/ (each original copied there when its copy is missing)
#   make test  - create .venv if missing, then lint, type-check and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rtkit-installed
PORT ?= 8888
LAB_DIR ?= my-notebooks
PYTEST_ARGS ?=

.PHONY: lab test lint typecheck bench browser redis tools clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "rtkit needs Python >= 3.11: run with PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Learners work in $(LAB_DIR)/, never in the tracked notebooks/: JupyterLab autosaves outputs,
# which would turn every `git pull` into a merge conflict. scripts/lab.py makes the copies,
# silences JupyterLab's news pop-up and starts it on 127.0.0.1:$(PORT) (a busy port fails
# rather than moving: PORT=8890 make lab).
lab: $(STAMP)
	$(BIN)/python scripts/lab.py --dir $(LAB_DIR) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check rtkit tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

browser:
	@bash scripts/ensure-chromium.sh

# The backplane tests start their own Redis (Debian's redis-server) on a free loopback port.
redis:
	@bash scripts/ensure-redis.sh

# curl, for the tests that run the curl examples of docs/protocol.md
tools:
	@bash scripts/ensure-curl.sh

test: $(STAMP) browser redis tools lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/fanout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
