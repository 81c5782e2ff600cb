# Two commands on a fresh machine: `make chat` (the REPL on the embedded default model) and
# `make test` (lint, types, tests). Both set up .venv first; re-running adds only a stamp check.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.factflow-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup chat test test-all lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

chat: setup
	$(BIN)/factflow chat

lint: setup
	$(BIN)/ruff check .
	bash scripts/typecheck.sh

# The fast set plus one real end-to-end path per component; `make test-all` adds the slow tests.
test: lint
	$(BIN)/python -m pytest -m "not slow" -q

test-all: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m factflow.bench.serving

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .typecheck
