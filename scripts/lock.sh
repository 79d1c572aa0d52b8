#!/usr/bin/env bash
# Refresh requirements.lock from requirements.txt (the human-edited input): every package, pinned, with
# the sha256 of each of its files on PyPI, for CPython 3.11 on x86-64 Linux (the machines CI runs on),
# whoever runs it. scripts/setup.sh installs from the lock with --require-hashes and re-installs when it
# changes. Extra arguments go to `uv pip compile` (e.g. --upgrade-package rich, or --upgrade for all);
# LOCK=FILE writes another file (the tests check that a refresh of the committed lock changes nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=$(command -v uv) || { echo "lock: no uv: run bash scripts/setup.sh first" >&2; exit 1; }
"$UV" pip compile requirements.txt --output-file "${LOCK:-requirements.lock}" --generate-hashes \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
  --custom-compile-command "bash scripts/lock.sh" --quiet "$@"
