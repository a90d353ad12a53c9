#!/usr/bin/env bash
# The main job on local defaults: start Kafka and Redis, run ingest, segmenter and QC predictor
# as their own processes, push synthetic studies by C-STORE like a PACS, and print each QC
# result (predicted Dice, interval, verdict, true Dice, latency from the last image).
# Extra arguments go to `cmrqc demo` (e.g. --studies 10 --with-rca --json).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
uv run cmrqc demo "$@"
echo "Kafka and Redis keep running; stop them with: uv run cmrqc infra down"
