#!/usr/bin/env bash
# The loaders `python -m benchmarks --only peers` (make bench) compares make_loader with. LitData and MosaicML
# Streaming import torchvision, which does not load with .venv's CPU torch, so they go into the
# official loader's environment (.venv-official: torch + torchvision from the index, see
# install_official.sh), with this project's runtime dependencies; the bench runs every loader there,
# make_loader included, so all of them share one torch. Both come with --no-deps plus the runtime
# packages they import: LitData would pull another torchvision, and mosaicml-streaming 0.13 pins
# numpy < 2.2 and transformers < 5, which conflict with datasets 5 (it only imports a class from
# transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OFFICIAL_VENV:-.venv-official}
[[ -x "$VENV/bin/python" ]] || bash scripts/install_official.sh
PY="$VENV/bin/python"
"$PY" -m pip install -q -c constraints.txt datasets webdataset "fsspec[http]" pyyaml tqdm simplejpeg
"$PY" -m pip install -q --no-deps litdata==0.2.76 mosaicml-streaming==0.13.0 transformers
"$PY" -m pip install -q lightning-utilities tifffile obstore "xxhash<4" zstd python-snappy Brotli catalogue \
  "safetensors>=0.8" tokenizers regex requests filelock boto3
PYTHONPATH=. "$PY" -c "import litdata, streaming, datasets, webdataset, bioscan5m_hf.stream.loader; \
print('peers:', 'litdata', litdata.__version__, '| streaming', streaming.__version__, '| datasets', datasets.__version__)"
