#!/usr/bin/env bash
# Set up (venv, requirements, Debian packages as root) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python cli.py plan --load 274 --profile profiles/paper.yaml --current resnet152=20 "$@"
