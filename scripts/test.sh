#!/usr/bin/env bash
# Set up (venv, requirements, Debian packages as root) and run the whole test suite, ruff included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/python -m pytest -q "$@"
