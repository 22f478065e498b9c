#!/usr/bin/env bash
# Runs the suite with a throwaway PostgreSQL server beside SQLite, so the store tests cover both.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check . || exit 1
bash tests/with-postgres.sh .venv/bin/pytest "$@"
