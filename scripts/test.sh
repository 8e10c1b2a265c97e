#!/usr/bin/env bash
# Lint and run the whole test suite (creates ./.venv first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
MATCHER_EXTRAS="${MATCHER_EXTRAS:-dev,bench,ray}" scripts/setup.sh  # bench: the peers tested in test_bench_transforms; ray: test_ray on a real local Ray
.venv/bin/ruff check matcher tests scripts
.venv/bin/ruff format --check matcher tests scripts
.venv/bin/python -m pytest "$@"
