#!/usr/bin/env bash
# The test suite: set up; lint (ruff, the import-layer contracts, the dependency page); pytest; then the
# numerics-sensitive tests once more under other CPU kernels (oneDNN capped at SSE4.1, ATen's default
# kernels, TF's oneDNN off): float32 rounding depends on the kernels a CPU picks, and the tests must hold
# whichever it picks. Extra arguments go to pytest.
#   bash scripts/test.sh --fast    the edit-test tier: no slow tests, no second kernel run
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
ruff check .
lint-imports --no-cache >/dev/null || lint-imports --no-cache
python scripts/dependency_graph.py --check
if [ "$fast" = 1 ]; then
  exec python -m pytest -m "not slow" "$@"
fi
python -m pytest "$@"
echo "[mfport] numerics-sensitive tests again under other CPU kernels (SSE4.1 oneDNN, ATen default, TF oneDNN off)"
ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default TF_ENABLE_ONEDNN_OPTS=0 \
  python -m pytest -m "numerics and not slow" "$@"
