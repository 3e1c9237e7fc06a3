#!/usr/bin/env bash
# The test suite: set up, lint, then pytest (arguments are passed on to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
ruff check .
python -m pytest "$@"
