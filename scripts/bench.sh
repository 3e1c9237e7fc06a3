#!/usr/bin/env bash
# Every benchmark of the project (JSON in benchmarks/results/), after the same set-up as the demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
python -m benchmarks.run_all "$@"
