"""Shared fixtures: releases made with the project's own sample generator, and their conversions.

No test touches the network: the Hub is switched off before `datasets` is imported.
"""

import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bioscan5m-hf-cache-"))
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Files fetched from remote roots and the metadata's mapped copy go to ~/.cache/bioscan5m-hf unless a
# test says where: not the real one.
os.environ["HOME"] = tempfile.mkdtemp(prefix="bioscan5m-hf-home-")
os.environ.pop("XDG_CACHE_HOME", None)

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (deterministic); locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from bioscan5m_hf.convert import ConvertOptions, convert  # noqa: E402
from bioscan5m_hf.tools.sample import write_sample  # noqa: E402

# Run by .venv-official in a subprocess, never imported here.
collect_ignore = ["stream/official_dump.py"]

RECORDS = 240
SEED = 7
PACKAGES = ("cropped_256", "original_256")


def small_conversion(root, records: int, seed: int, shard_records: int):
    """``root/out``: a cropped_256 release of ``records`` small images (zips), converted with
    ``shard_records`` records per shard."""
    write_sample(root / "release", records, seed, ("cropped_256",), image_size=32, layout=("zips",),
                 show_progress=False)
    convert(root / "release", root / "out", ConvertOptions(shard_records=shard_records, show_progress=False))
    return root / "out"


def stream_loader(root, split, *, mode=None, **kw):
    """``make_loader`` over ``StreamingBIOSCAN5M(root, split, shuffle=True, ...)``: ``kw`` holds the
    dataset's keywords (``storage`` and ``composition`` as objects) and the loader's, side by side,
    as most loader tests vary both. ``mode`` (a ``loader.Mode``) forces how the batches are made,
    where ``choose_mode`` would pick another, so that the ways can be compared."""
    from unittest import mock

    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader
    from bioscan5m_hf.stream import loader as loader_module

    dataset = {"shuffle": True, **{k: kw.pop(k) for k in list(kw) if k in loader_module.DATASET_KEYWORDS}}
    dataset = StreamingBIOSCAN5M(root, split, **dataset)
    if mode is None:
        return make_loader(dataset, **kw)
    with mock.patch.object(loader_module, "choose_mode", lambda *args, **kwargs: mode):
        return make_loader(dataset, **kw)


def interrupted(make, stop: int):
    """Batches of the loader ``make()`` interrupted after ``stop`` batches and finished by a fresh
    ``make()`` resumed from its ``state_dict``; and that state."""
    loader = make()
    it = iter(loader)
    head = [next(it) for _ in range(stop)]
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    return head + list(resumed), state


def assert_same_batches(a_batches, b_batches, at_least: int = 1):
    """Two loaders' batches: the same count (over ``at_least``), keys, record order, value types, and
    tensors equal in dtype, shape and value."""
    assert len(a_batches) == len(b_batches) > at_least
    for a, b in zip(a_batches, b_batches):
        assert a.keys() == b.keys() and a["processid"] == b["processid"]
        for k in a:
            assert type(a[k]) is type(b[k]), (k, type(a[k]), type(b[k]))
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """A release with two packages, as folders and as official zips."""
    root = tmp_path_factory.mktemp("release")
    write_sample(root, RECORDS, SEED, PACKAGES, image_size=48, show_progress=False)
    return root


def options(**kw):
    base = dict(packages=PACKAGES, shard_records=40, show_progress=False)
    base.update(kw)
    return ConvertOptions(**base)


@pytest.fixture(scope="session")
def converted_zips(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("out-zips")
    return convert(release, out, options(image_source="zips"))


@pytest.fixture
def out(converted_zips, tmp_path):
    """A private copy of the zips conversion's OUT folder, for tests that change or damage it."""
    copy = tmp_path / "out"
    shutil.copytree(converted_zips.repos["parquet"].parent, copy)
    return copy


@pytest.fixture(scope="session")
def converted_folders(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("out-folders")
    return convert(release, out, options(image_source="folders", workers=2))
