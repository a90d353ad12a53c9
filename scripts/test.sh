#!/usr/bin/env bash
# The test command: set up, start Kafka + Redis, lint, check generated files, run every test
# against the real broker, stop the infrastructure. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

cleanup() {
  uv run cmrqc infra down || true
}
trap cleanup EXIT

uv run cmrqc infra up
uv run ruff check .
uv run ruff format --check .
uv run mypy
uv run cmrqc schemas check
uv run pytest "$@"
