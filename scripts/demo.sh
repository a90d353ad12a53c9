#!/usr/bin/env bash
# The main job on local defaults. Until the services land it is the bus benchmark: one
# pass-through hop through the runner against a bare kafka-python loop, on a real broker.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
uv run cmrqc infra up
uv run cmrqc topics ensure
uv run cmrqc bench bus --records 3000 --rounds 3 "$@"
echo "Kafka and Redis keep running; stop them with: uv run cmrqc infra down"
