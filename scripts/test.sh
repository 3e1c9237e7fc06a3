#!/usr/bin/env bash
# The test suite: set up; lint (ruff, the import-layer contracts, the dependency page); pytest; then the
# numerics-sensitive tests once more under other CPU kernels (oneDNN capped at SSE4.1, ATen's default
# kernels, TF's oneDNN off): float32 rounding depends on the kernels a CPU picks, and the tests must hold
# whichever it picks. Extra arguments go to pytest.
#   bash scripts/test.sh --fast    the edit-test tier: no slow or heavy tests, no second kernel run
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_env.sh"
cd "$MFPORT_ROOT"
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi
ruff check .
lint-imports --no-cache >/dev/null || lint-imports --no-cache
python scripts/dependency_graph.py --check
# One XLA compilation cache for this command's pytest runs and the processes they start (tests/conftest.py).
xla_cache="$(mktemp -d "${TMPDIR:-/tmp}/mfport-xla-cache-XXXXXX")"
trap 'rm -rf "$xla_cache"' EXIT
export TF_XLA_FLAGS="${TF_XLA_FLAGS:-} --tf_xla_persistent_cache_directory=$xla_cache"
# Two pytest-xdist workers, a test file each at a time: much of a test's time is single-threaded (tracing, XLA
# compilation, process start-up), so two share the 2 cores of a small machine well. MFPORT_TEST_WORKERS=0: one process.
workers=(-n "${MFPORT_TEST_WORKERS:-2}" --dist loadfile)
if [ "$fast" = 1 ]; then
  python -m pytest "${workers[@]}" -m "not slow and not heavy" "$@"
  exit
fi
python -m pytest "${workers[@]}" "$@"
echo "[mfport] numerics-sensitive tests again under other CPU kernels (SSE4.1 oneDNN, ATen default, TF oneDNN off)"
ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default TF_ENABLE_ONEDNN_OPTS=0 \
  python -m pytest "${workers[@]}" -m "numerics and not slow" "$@"
