# The two commands of the README:
#   make lab   - create .venv if missing, then start JupyterLab on notebooks/
#   make test  - create .venv if missing, then lint, type-check and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rtkit-installed
PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: lab test lint typecheck bench browser clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "rtkit needs Python >= 3.11: run with PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# --allow-root: workshop machines and containers often run as root; JupyterLab refuses
# to start as root without it.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 \
		--ServerApp.port=$(PORT) --ServerApp.port_retries=0 --LabApp.news_url=None \
		--allow-root

lint: $(STAMP)
	$(BIN)/ruff check rtkit tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

browser:
	@bash scripts/ensure-chromium.sh

test: $(STAMP) browser lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/fanout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
