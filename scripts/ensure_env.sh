#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install mfport with everything it needs.
# Sourced by scripts/demo.sh and scripts/test.sh; afterwards the venv's bin/ is first on PATH.
#   MFPORT_VENV          venv location (default: <repo>/.venv)
#   MFPORT_TORCH_SPEC    torch requirement installed when the venv has no torch (default: torch==2.13.0)
set -euo pipefail
MFPORT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MFPORT_VENV=${MFPORT_VENV:-$MFPORT_ROOT/.venv}
if [ ! -x "$MFPORT_VENV/bin/python" ]; then
  echo "[mfport] creating virtual environment $MFPORT_VENV"
  "${PYTHON:-python3}" -m venv "$MFPORT_VENV"
fi
export PATH="$MFPORT_VENV/bin:$PATH"
stamp="$MFPORT_VENV/.mfport-install-stamp"
wanted=$(cat "$MFPORT_ROOT/pyproject.toml" "$MFPORT_ROOT/scripts/ensure_env.sh" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  log="$MFPORT_VENV/mfport-install.log"
  echo "[mfport] installing dependencies (log: $log)"
  # torch first: a bare torch requirement with no torch installed pulls a multi-GB CUDA build,
  # while torch==2.13.0 resolves to the CPU wheel here. A torch the user installed is kept.
  if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install --disable-pip-version-check "${MFPORT_TORCH_SPEC:-torch==2.13.0}" >"$log" 2>&1 \
      || { tail -n 30 "$log"; echo "[mfport] torch install failed" >&2; exit 1; }
  fi
  python -m pip install --disable-pip-version-check -e "$MFPORT_ROOT[test,hf]" >>"$log" 2>&1 \
    || { tail -n 30 "$log"; echo "[mfport] install failed" >&2; exit 1; }
  echo "$wanted" >"$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
export TF_USE_LEGACY_KERAS=${TF_USE_LEGACY_KERAS:-1}
