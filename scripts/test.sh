#!/usr/bin/env bash
# Lint and run the whole test suite (creates ./.venv first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
MATCHER_EXTRAS="${MATCHER_EXTRAS:-dev,bench}" scripts/setup.sh  # bench: the peers tested in test_bench_transforms
.venv/bin/ruff check matcher tests scripts
.venv/bin/ruff format --check matcher tests scripts
.venv/bin/python -m pytest "$@"
