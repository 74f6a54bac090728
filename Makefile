# The two commands: `make demo` (set up, deploy a tiny model locally, talk to it) and `make test`.
# Both create .venv if missing and install what they need with pip (so torch comes from the local
# CPU wheel, never a CUDA build).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.argosy-demo
TEST_STAMP := $(VENV)/.argosy-test
# Tests exercise every provider's real SDK against loopback fakes, and a real fine-tune.
TEST_EXTRAS := engine,train,dev,aws,gcp,linode,modal,kubernetes
TORCH  := torch==2.13.0

.PHONY: demo test lint format install clean-demo bench

$(BIN)/python:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --upgrade pip

# Reinstall when the dependency list changes. torch first, from the local CPU wheel, so nothing
# later pulls a CUDA build.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing torch (CPU build, from the local wheel)"
	$(BIN)/pip install --progress-bar on $(TORCH)
	@echo "==> installing argosy with the engine extra and the OpenAI client"
	$(BIN)/pip install --progress-bar on -e '.[engine,client]'
	@touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing torch (CPU build, from the local wheel)"
	$(BIN)/pip install --progress-bar on $(TORCH)
	@echo "==> installing argosy with the test extras ($(TEST_EXTRAS))"
	$(BIN)/pip install --progress-bar on -e '.[$(TEST_EXTRAS)]'
	@touch $@ $(DEMO_STAMP)

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

test: $(TEST_STAMP)
	@echo "==> llama-server for the end-to-end tests (built once from source, then cached in ~/.argosy/cache)"
	$(BIN)/argosy model build-engine
	@echo "==> starting a PostgreSQL server on loopback for the store tests"
	ARGOSY_TEST_POSTGRES_URL=$$(bash .ci/postgres.sh) $(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check argosy tests bench examples
	$(BIN)/ruff format --check argosy tests bench examples

format: $(TEST_STAMP)
	$(BIN)/ruff format argosy tests bench examples
	$(BIN)/ruff check --fix argosy tests bench examples

bench: $(DEMO_STAMP)
	$(BIN)/python bench/engine.py

clean-demo: $(DEMO_STAMP)
	-$(BIN)/argosy destroy --all
	-$(BIN)/argosy server stop
