import csv
import json
import shutil
import tarfile
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.convert import ConvertOptions, convert
from bioscan5m_hf.errors import ReleaseError

from ..conftest import PACKAGES, options

FLOATS = {"coord-lat", "coord-lon", "image_measurement_value", "area_fraction", "scale_factor"}
INTS = {"inferred_ranks", "index_bioscan_1M_insect"}


def csv_records(release):
    """The CSV read independently of the converter (csv module, by hand)."""
    with open(release / schema.METADATA_CSV, newline="", encoding="utf-8") as f:
        out = {}
        for row in csv.DictReader(f):
            rec = {}
            for k, v in row.items():
                rec[k] = None if v == "" else float(v) if k in FLOATS else int(float(v)) if k in INTS else v
            out[rec["processid"]] = rec
        return out


def all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def parquet_records(repo, config):
    by_split = defaultdict(list)
    for path in sorted((repo / config).glob("*/*.parquet")):
        by_split[path.parent.name].extend(pq.read_table(path).to_pylist())
    return by_split


def tar_records(repo, config):
    by_split = defaultdict(list)
    for path in sorted((repo / config).glob("*/*.tar")):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for jpg, meta in zip(members[::2], members[1::2]):
                key = jpg.name.rsplit(".", 1)[0]
                assert jpg.name == f"{key}.jpg" and meta.name == f"{key}.json"
                record = json.loads(tar.extractfile(meta).read())
                record["image"] = tar.extractfile(jpg).read()
                by_split[path.parent.name].append(record)
    return by_split


@pytest.mark.parametrize("which", ["converted_zips", "converted_folders"])
def test_every_record_once_with_identical_images_and_metadata(release, which, request):
    result = request.getfixturevalue(which)
    expected = csv_records(release)
    for package in PACKAGES:
        for fmt, read in (("parquet", parquet_records), ("webdataset", tar_records)):
            by_split = read(result.repos[fmt], package)
            assert set(by_split) == set(schema.SPLITS)
            seen = []
            for split, records in by_split.items():
                for rec in records:
                    pid = rec["processid"]
                    seen.append(pid)
                    image = rec.pop("image")
                    image = image["bytes"] if isinstance(image, dict) else image
                    assert rec == expected[pid], (fmt, package, pid)
                    assert rec["split"] == split
                    src = release / schema.image_relpath(package, split, rec["chunk"], pid)
                    assert image == src.read_bytes()
            assert sorted(seen) == sorted(expected), (fmt, package)  # every record exactly once
    metadata = parquet_records(result.repos["parquet"], "metadata")
    assert sorted(r["processid"] for rs in metadata.values() for r in rs) == sorted(expected)
    assert all(r == expected[r["processid"]] for rs in metadata.values() for r in rs)


def test_output_is_byte_identical_for_zips_folders_and_worker_counts(converted_zips, converted_folders, release,
                                                                     tmp_path):
    a = all_files(converted_zips.repos["parquet"].parent)
    b = all_files(converted_folders.repos["parquet"].parent)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    again = convert(release, tmp_path, options(image_source="zips"))
    assert all_files(again.repos["parquet"].parent) == a
    assert not (tmp_path / ".bioscan5m-work").exists()


def test_shards_are_within_the_limit_shuffled_and_listed_in_the_manifest(converted_zips, release):
    manifest = converted_zips.manifests["webdataset"]
    pretrain = manifest["configs"]["cropped_256"]["pretrain"]
    counts = [s["num_records"] for s in pretrain["shards"]]
    assert len(counts) > 1 and min(counts) > 0 and max(counts) <= 40  # key ranges of at most shard_records
    assert sum(counts) == pretrain["num_records"]
    repo = converted_zips.repos["webdataset"]
    for shard in pretrain["shards"]:
        path = repo / shard["path"]
        assert path.stat().st_size == shard["num_bytes"]
    # Records are not in CSV order within a split (seeded shuffle).
    order = [r["processid"] for r in tar_records(repo, "cropped_256")["pretrain"]]
    in_csv = [pid for pid, r in csv_records(release).items() if r["split"] == "pretrain"]
    assert sorted(order) == sorted(in_csv) and order != in_csv
    assert set(manifest["vocabularies"]) == set(schema.LABEL_COLUMNS)
    assert manifest["source"]["num_records"] == 240
    assert "metadata" in converted_zips.manifests["parquet"]["configs"]
    assert "metadata" not in manifest["configs"]


def test_parquet_row_groups_are_viewer_sized_with_page_index(converted_zips):
    for path in converted_zips.repos["parquet"].rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            assert group.total_byte_size < 100 << 20
            assert group.column(0).has_offset_index


def test_webdataset_library_reads_the_tars_with_standard_decoders(converted_zips):
    import webdataset as wds
    from PIL import Image

    repo = converted_zips.repos["webdataset"]
    urls = sorted(str(p) for p in (repo / "cropped_256" / "train").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == converted_zips.manifests["webdataset"]["configs"]["cropped_256"]["train"]["num_records"]
    for s in samples:
        assert isinstance(s["jpg"], Image.Image) and s["jpg"].mode == "RGB"
        assert s["json"]["processid"] == s["__key__"]


def test_load_dataset_every_config_and_split_streaming_and_not(converted_zips):
    import datasets

    for fmt in schema.FORMATS:
        repo = converted_zips.repos[fmt]
        for config, splits in converted_zips.manifests[fmt]["configs"].items():
            loaded = datasets.load_dataset(str(repo), config)
            assert set(loaded) == set(splits)
            for split, info in splits.items():
                ds = loaded[split]
                assert ds.num_rows == info["num_records"]
                streamed = list(datasets.load_dataset(str(repo), config, split=split, streaming=True))
                assert len(streamed) == info["num_records"]
                first = ds[0]
                meta = first["json"] if fmt == "webdataset" else first
                assert isinstance(meta["dna_barcode"], str) and isinstance(meta["inferred_ranks"], int)
                assert meta["split"] == split
                features = ds.features["json"] if fmt == "webdataset" else ds.features
                assert features["coord-lat"] == datasets.Value("float64")
                assert features["species"] == datasets.Value("string")
                if config != "metadata":
                    image = first["jpg"] if fmt == "webdataset" else first["image"]
                    assert image.format == "JPEG" and min(image.size) == 48
                    assert streamed[0]["__key__" if fmt == "webdataset" else "processid"] is not None


def test_missing_images_are_an_error_unless_allowed(release, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(release / "bioscan5m", copy / "bioscan5m")
    gone = sorted((copy / "bioscan5m/images/cropped_256/train").rglob("*.jpg"))[:3]
    for p in gone:
        p.unlink()
    opts = ConvertOptions(packages=("cropped_256",), show_progress=False)
    with pytest.raises(ReleaseError, match=r"3 of \d+ records have no 'cropped_256' image in folder .*; first missing: "
                                           + ", ".join(sorted(p.stem for p in gone))):
        convert(copy, tmp_path / "out", opts)
    result = convert(copy, tmp_path / "out2", ConvertOptions(packages=("cropped_256",), allow_missing=True,
                                                             show_progress=False))
    for fmt in schema.FORMATS:
        assert result.manifests[fmt]["skipped"] == {"cropped_256": {"train": sorted(p.stem for p in gone)}}
    counts = result.split_records("parquet", "cropped_256")
    assert counts["train"] == result.split_records("parquet", "metadata")["train"] - 3


def test_changed_options_are_refused_unless_overwrite(release, tmp_path):
    first = convert(release, tmp_path, options(packages=("cropped_256",), formats=("webdataset",)))
    assert list(first.repos) == ["webdataset"]
    with pytest.raises(ReleaseError, match="other options.*--overwrite"):
        convert(release, tmp_path, options(packages=("cropped_256",), formats=("webdataset",), shard_records=7))
    again = convert(release, tmp_path, options(packages=("cropped_256",), formats=("webdataset",), shard_records=7),
                    overwrite=True)
    tars = list(again.repos["webdataset"].rglob("*.tar"))
    listed = [s for c in again.manifests["webdataset"]["configs"].values() for v in c.values() for s in v["shards"]]
    assert len(tars) == len(listed)


def test_split_subset(release, tmp_path):
    result = convert(release, tmp_path, options(packages=("cropped_256",), splits=("train", "val")))
    assert list(result.manifests["parquet"]["configs"]["cropped_256"]) == ["train", "val"]
    assert len(result.manifests["parquet"]["configs"]["metadata"]) == len(schema.SPLITS)
