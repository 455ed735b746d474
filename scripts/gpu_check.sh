#!/usr/bin/env bash
# The prepared GPU check (issue 13), for a machine with a CUDA GPU and a Python that already has
# torch, torchvision, pyarrow, pillow, pytest and hypothesis, and no network:
#
#   bash scripts/gpu_check.sh [WHEELS_DIR]
#
# 1. installs the few missing pure-Python or small packages from WHEELS_DIR (made beforehand with
#    `pip download`, e.g. simplejpeg for the workers' fast decoder) into a private folder;
# 2. runs the CUDA tests: device="cuda" batches equal to CPU ones, the side-stream copy overlapping a
#    dummy model step, decode="device" against decode="workers" within the
#    tested bound, exact resume on the GPU; prints the pixel differences on the embedded sample;
# 3. runs `python -m benchmarks --only gpu` and writes its table, with the GPU's name, into BENCHMARKS.md.
# About 4-6 minutes on one H100/H200 with 16 cores.
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
  tests/stream/test_device_decode.py tests/stream/test_loader.py::test_cuda_path_runs_where_a_gpu_is \
  tests/stream/test_loader.py::test_cuda_copy_overlaps_the_model_step
echo "decode=device on cuda vs decode=workers, embedded sample (shards/), pixel differences:"
"$PYTHON" tests/stream/device_cases.py shards --device cuda
[[ -n "${SKIP_BENCH:-}" ]] && exit 0
"$PYTHON" -m benchmarks "${BENCH_DIR:-/tmp/bioscan5m-gpu-bench}" --only gpu --output BENCHMARKS.md \
  ${BENCH_ARGS:-}
