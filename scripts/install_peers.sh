#!/usr/bin/env bash
# The loaders `bioscan5m-hf bench --only peers` compares make_loader with, installed into .venv next
# to it without touching its torch: LitData and MosaicML Streaming come with --no-deps plus the few
# runtime packages they import (LitData asks for torchvision and mosaicml-streaming pins numpy < 2.2
# and transformers < 5, which would replace .venv's torch or conflict with datasets; neither needs
# them for reading local shards). webdataset and datasets are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pip install -q --no-deps litdata==0.2.76 mosaicml-streaming==0.13.0
"$VENV/bin/python" -m pip install -q lightning-utilities tifffile obstore xxhash zstd python-snappy Brotli catalogue \
  "urllib3>=1.26" requests filelock
"$VENV/bin/python" -c "import litdata, streaming; print('peers: litdata', litdata.__version__, '/ streaming', streaming.__version__)"
