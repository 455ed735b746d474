#!/usr/bin/env bash
# Set up .venv with everything bioscan5m-hf and its tests need. Safe to rerun.
# torch: a user's own torch (e.g. a CUDA build) is kept when the system Python has one; otherwise the
# CPU build is installed first, so that no requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [[ ! -x "$VENV/bin/python" ]]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q torch==2.13.0 \
    || "$VENV/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
