"""The embedded default in shards/ is exactly what the code makes, and loads right after a clone."""

import importlib.metadata
import re
from pathlib import Path

import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.tools.demo import EMBEDDED_DIR, make_embedded

ROOT = Path(__file__).resolve().parents[2]


def pinned():
    text = (ROOT / "constraints.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_\-]+)==(\S+)", text, flags=re.M))


def test_embedded_default_regenerates_byte_identical(tmp_path):
    pins = pinned()
    for package in ("pillow", "pyarrow", "numpy"):  # JPEG encoder, Parquet writer, random numbers
        have = importlib.metadata.version(package)
        if have != pins[package]:
            pytest.skip(f"{package} {have} is not the pinned {pins[package]} that shards/ was made with")
    result = make_embedded(tmp_path / "release", tmp_path / "out")
    for fmt, name in (("parquet", schema.PARQUET_REPO), ("webdataset", schema.WDS_REPO)):
        made = {p.relative_to(result.repos[fmt]).as_posix(): p.read_bytes()
                for p in result.repos[fmt].rglob("*") if p.is_file()}
        committed = {p.relative_to(EMBEDDED_DIR / name).as_posix(): p.read_bytes()
                     for p in (EMBEDDED_DIR / name).rglob("*") if p.is_file()}
        assert made.keys() == committed.keys()
        differ = [k for k in made if made[k] != committed[k]]
        assert differ == [], f"shards/ is stale; run scripts/make_shards.py ({differ[:3]})"


def test_load_dataset_on_the_committed_shards():
    import datasets

    ds = datasets.load_dataset(str(EMBEDDED_DIR / schema.PARQUET_REPO), "cropped_256", split="train")
    assert ds.num_rows == 25 and ds[0]["image"].format == "JPEG"
    wds = datasets.load_dataset(str(EMBEDDED_DIR / schema.WDS_REPO), "cropped_256", split="val", streaming=True)
    assert next(iter(wds))["json"]["split"] == "val"
