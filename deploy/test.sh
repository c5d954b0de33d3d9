#!/usr/bin/env bash
# Set up and run every check: lint, format, types, the layer contracts, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest -q "$@"
