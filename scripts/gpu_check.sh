#!/usr/bin/env bash
# The prepared GPU check (issues 13 and 31), for a machine with a CUDA GPU and a Python that already
# has torch, torchvision, pyarrow, pillow, fsspec and huggingface_hub, and no network:
#
#   bash scripts/gpu_check.sh [WHEELS_DIR]
#
# 1. installs the packages it lacks from WHEELS_DIR into a private folder: made beforehand, where
#    there is network, with
#      pip download --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
#        -d WHEELS_DIR nvidia-dali-cuda120==2.4.0 simplejpeg pytest hypothesis pyyaml
#    (DALI with its dependencies is several hundred MB: it may travel in parts);
# 2. runs the CUDA tests: device="cuda" batches equal to CPU ones, the side-stream copy overlapping a
#    dummy model step, decode="device" and decode="dali" (nvJPEG through DALI's "mixed" decoder)
#    against decode="workers" within the tested bounds, exact resume on the GPU; prints the pixel
#    differences on the embedded sample;
# 3. runs `python -m benchmarks --only gpu` (dali, device and the CPU workers side by side at 2, 8
#    and 15 workers) and writes its table, with the GPU's name, into BENCHMARKS.md.
# About 6-9 minutes on one H100/H200 with 16 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-}
PYTHON=${PYTHON:-python3}
SITE=${TMPDIR:-/tmp}/bioscan5m-gpu-site
if [[ -n "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, torchvision; assert torch.cuda.is_available(), 'no CUDA device'; \
print('GPU', torch.cuda.get_device_name(), '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
"$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/stream/test_device_decode.py tests/stream/test_dali_decode.py \
  tests/stream/test_loader.py::test_cuda_path_runs_where_a_gpu_is \
  tests/stream/test_loader.py::test_cuda_copy_overlaps_the_model_step
echo "decode=device on cuda vs decode=workers, embedded sample (shards/), pixel differences:"
"$PYTHON" tests/stream/device_cases.py shards --device cuda
if "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
  echo "decode=dali on cuda vs decode=workers, embedded sample (shards/), pixel differences:"
  "$PYTHON" tests/stream/device_cases.py shards --device cuda --decode dali
fi
[[ -n "${SKIP_BENCH:-}" ]] && exit 0
"$PYTHON" -m benchmarks "${BENCH_DIR:-/tmp/bioscan5m-gpu-bench}" --only gpu --output BENCHMARKS.md \
  ${BENCH_ARGS:-}
