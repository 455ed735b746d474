#!/usr/bin/env bash
# NVIDIA DALI (the `dali` extra) into .venv, for the tests that read the WebDataset repo with DALI's
# own reader and run the README's DALI pipeline (on the CPU where there is no GPU). Its wheel is large
# (about 420 MB) and Linux x86-64 only: `make test` goes on without it, and those tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pip install -q -c constraints.txt "nvidia-dali-cuda120==2.4.0"
"$VENV/bin/python" -c "import nvidia.dali; print('DALI', nvidia.dali.__version__)"
