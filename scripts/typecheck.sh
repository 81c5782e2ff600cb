#!/usr/bin/env bash
# mypy must see the repo root *as* the package `factflow` (setuptools maps it with package-dir),
# so we check it through a symlink named factflow.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .typecheck
ln -sfn .. .typecheck/factflow
MYPYPATH=.typecheck .venv/bin/mypy -p factflow
