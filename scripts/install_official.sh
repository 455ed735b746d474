#!/usr/bin/env bash
# A separate environment with the official loader, bioscan-dataset 1.3.0, for the conformance test
# (tests/stream/test_conformance.py), the benchmarks that compare against it (which also import our
# image decode and tokenizer there, hence pyarrow), and the decode="device" tests, which need
# torchvision too (tests/stream/test_device_decode.py). torchvision's wheels pin their own torch, so
# it lives apart from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OFFICIAL_VENV:-.venv-official}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 bioscan-dataset==1.3.0 numpy pillow pyarrow
"$VENV/bin/python" -c "import bioscan_dataset, torchvision; print('official loader', bioscan_dataset.__version__)"
