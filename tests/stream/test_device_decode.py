"""decode="device" (JPEG bytes to the main process, torchvision decodes there) and the seeded
training crops. torchvision does not load with the CPU torch of .venv, so where it is missing the
comparison runs in .venv-official (torch + torchvision from the package index, CPU decoder), as
scripts/gpu_check.sh runs it with nvJPEG on a GPU."""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bioscan5m_hf.transforms import random_resized_crop_box, sample_rng

from ..conftest import interrupted, stream_loader
from .device_cases import check, compare
from .test_conformance import OFFICIAL, ROOT


def torchvision_loads() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision.io  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


@pytest.fixture(scope="module")
def comparison(converted_zips):
    root = str(converted_zips.repos["parquet"].parent)
    if torchvision_loads():
        return compare(root)
    if not OFFICIAL.exists():
        pytest.skip(f"no torchvision here and no {OFFICIAL} to run the device decoder in")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(OFFICIAL), str(ROOT / "tests" / "stream" / "device_cases.py"), root], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("crop", ["centre", "augment"])
def test_device_batches_equal_worker_batches_but_for_pixel_rounding(comparison, crop):
    check(comparison, crop)


def test_device_decode_resumes_exactly(comparison):
    assert comparison["resume_exact"]


def test_decode_is_checked_and_a_missing_torchvision_names_the_extra(converted_zips):
    root = converted_zips.repos["parquet"].parent
    with pytest.raises(ValueError, match="decode must be one of"):
        stream_loader(root, "train", decode="gpu")
    if not torchvision_loads():
        with pytest.raises(ImportError, match=r"bioscan5m-hf\[gpu\]"):
            stream_loader(root, "train", decode="device")
    stream_loader(root, "train", decode="device", modality=("dna",))  # no images: nothing to decode


def images_by_pid(loader) -> dict:
    return {p: im for b in loader for p, im in zip(b["processid"], b["image"])}


def test_augmented_crops_depend_on_seed_epoch_and_record_only(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=32, augment=True, seed=3)
    one = stream_loader(root, "train", num_workers=0, **kw)
    first, second = images_by_pid(one), images_by_pid(one)  # epochs 0 and 1
    other = images_by_pid(stream_loader(root, "train", num_workers=2, buffer_size=5, **kw))
    assert first.keys() == other.keys() and all(torch.equal(first[k], other[k]) for k in first)
    assert sum(not torch.equal(first[k], second[k]) for k in first) > 0.9 * len(first)
    centre = images_by_pid(stream_loader(root, "train", num_workers=0, batch_size=8, image_size=32))
    assert sum(not torch.equal(first[k], centre[k]) for k in first) > 0.9 * len(first)


def test_augmented_loader_resumes_exactly(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(batch_size=8, image_size=32, augment=True, seed=3, num_workers=2)
    full = [b["image"] for b in stream_loader(root, "pretrain", **kw)]
    batches, _ = interrupted(lambda: stream_loader(root, "pretrain", **kw), 2)
    assert len(batches) == len(full) > 4
    assert all(torch.equal(a, b["image"]) for a, b in zip(full, batches))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_random_resized_crop_stays_inside_the_image(width, height, seed):
    top, left, h, w = random_resized_crop_box(width, height, np.random.default_rng(seed))
    assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= height and left + w <= width


def test_sample_randomness_is_a_function_of_seed_epoch_and_record():
    draw = lambda *a: sample_rng(*a).random()  # noqa: E731
    assert draw(0, 1, "ABC-1") == draw(0, 1, "ABC-1")
    assert len({draw(0, 1, "ABC-1"), draw(0, 2, "ABC-1"), draw(1, 1, "ABC-1"), draw(0, 1, "ABC-2")}) == 4


def test_cuda_device_decode_where_a_gpu_is(converted_zips):
    if not torch.cuda.is_available() or not torchvision_loads():
        pytest.skip("needs CUDA and torchvision (scripts/gpu_check.sh runs this on a GPU machine)")
    c = compare(str(converted_zips.repos["parquet"].parent), device="cuda")
    assert c["centre"]["same_order_keys_labels"] and c["augment"]["same_order_keys_labels"] and c["resume_exact"]
    # nvJPEG upsamples chroma and computes the IDCT differently from libjpeg: measured on an H200,
    # mean 1.4 for both crops (BENCHMARKS.md).
    assert c["centre"]["mean_abs_diff"] <= 6.0 and c["augment"]["mean_abs_diff"] <= 4.0, c
