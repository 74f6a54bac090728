# The two commands: `make demo` (set up, deploy a tiny model locally, talk to it) and `make test`.
# Both create .venv if missing and install what they need with pip (so torch comes from the local
# CPU wheel, never a CUDA build).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.argosy-installed
TORCH  := torch==2.13.0

.PHONY: demo test lint format install clean-demo bench

$(BIN)/python:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing torch (CPU build, from the local wheel)"
	$(BIN)/pip install --progress-bar on $(TORCH)
	@echo "==> installing argosy with the engine and dev extras"
	$(BIN)/pip install --progress-bar on -e '.[engine,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	@echo "==> starting a PostgreSQL server on loopback for the store tests"
	ARGOSY_TEST_POSTGRES_URL=$$(bash .ci/postgres.sh) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check argosy tests bench examples
	$(BIN)/ruff format --check argosy tests bench examples

format: $(STAMP)
	$(BIN)/ruff format argosy tests bench examples
	$(BIN)/ruff check --fix argosy tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean-demo: $(STAMP)
	-$(BIN)/argosy destroy --all
	-$(BIN)/argosy server stop
