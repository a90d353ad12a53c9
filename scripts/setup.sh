#!/usr/bin/env bash
# Installs everything CMR-QC Stream needs on a fresh Debian machine (idempotent):
# system packages (Java 17 for Kafka, Maven to fetch its jars once, Redis, DCMTK, Orthanc,
# kcat), uv, and the Python workspace from the lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(openjdk-17-jre-headless maven redis-server dcmtk orthanc kcat)

missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Java may come from elsewhere (e.g. Temurin): accept any java >= 17 on PATH.
if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
  missing=("${missing[@]/openjdk-17-jre-headless}")
fi
if command -v mvn >/dev/null 2>&1; then missing=("${missing[@]/maven}"); fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv"
  python3 -m pip install -q "uv==0.13.8"
fi
uv sync --all-packages --frozen -q
echo "setup: done ($(uv run python --version), $(java -version 2>&1 | head -1))"
