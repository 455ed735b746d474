import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.convert import writers

RECORD = {name: None for name in schema.COLUMN_NAMES} | {
    "processid": "ABCD1000-20", "sampleid": "BIOUG00001-A01", "dna_barcode": "ACGTN", "split": "val",
    "inferred_ranks": 0, "coord-lat": 45.5, "species": "Aus bus", "country": "Côte d'Ivoire",
}


def meta_table(records):
    return pa.Table.from_pylist(records, schema=schema.arrow_schema())


def test_record_json_has_every_key_in_schema_order():
    data = json.loads(writers.record_json(RECORD))
    assert list(data) == list(schema.COLUMN_NAMES)
    assert data["species"] == "Aus bus" and data["genus"] is None and data["country"] == "Côte d'Ivoire"
    with pytest.raises(ValueError, match="non-finite"):
        writers.record_json(RECORD | {"coord-lon": float("nan")})


def test_tar_is_deterministic_and_well_formed(tmp_path):
    records = [RECORD, RECORD | {"processid": "ABCD1001-20"}]
    images = [b"\xff\xd8jpeg-one", b"\xff\xd8jpeg-two"]
    writers.write_tar(tmp_path / "a.tar", records, images)
    writers.write_tar(tmp_path / "b.tar", records, images)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["ABCD1000-20.jpg", "ABCD1000-20.json", "ABCD1001-20.jpg",
                                             "ABCD1001-20.json"]
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        assert tar.extractfile(members[2]).read() == images[1]
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed away


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        writers.write_tar(tmp_path / "c.tar", [RECORD | {"coord-lon": float("inf")}], [b"x"])
    assert list(tmp_path.iterdir()) == []


def test_parquet_image_struct_features_and_settings(tmp_path):
    records = [RECORD | {"processid": f"ABCD{1000 + i}-20"} for i in range(600)]
    images = [bytes([i % 256]) * 50 for i in range(600)]
    table = writers.parquet_table(meta_table(records), images)
    writers.write_parquet(tmp_path / "x.parquet", table, with_image=True)
    f = pq.ParquetFile(tmp_path / "x.parquet")
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
    cuts = writers.cut_points([r["processid"] for r in records], writers.IMAGE_ROW_GROUP_MEAN)
    assert 1 < len(sizes) and max(sizes) <= writers.IMAGE_ROW_GROUP_ROWS
    assert sizes == writers.row_groups(table, True)
    ends = np.cumsum(sizes) - 1  # a group ends at a record whose hash cuts past the minimum, or at the end
    assert all(cuts[e] and size >= writers.IMAGE_ROW_GROUP_MIN or e == len(records) - 1
               for e, size in zip(ends.tolist(), sizes))
    starts = np.concatenate([[0], ends[:-1] + 1])
    # and no record whose hash cuts, past the minimum, inside a group
    assert all(not cuts[a + writers.IMAGE_ROW_GROUP_MIN - 1: e].any() for a, e in zip(starts, ends))
    # datasets' writer settings (datasets.config): content-defined pages, recorded as datasets does;
    # image bytes stored plain and uncompressed, the metadata zstd.
    assert json.loads(f.metadata.metadata[b"content_defined_chunking"]) == writers.CDC_OPTIONS
    columns = {f.metadata.row_group(0).column(i).path_in_schema: f.metadata.row_group(0).column(i)
               for i in range(f.metadata.num_columns)}
    assert columns["image.bytes"].compression == "UNCOMPRESSED" and columns["processid"].compression == "ZSTD"
    assert f.schema_arrow.field("image").type == schema.IMAGE_STRUCT
    assert json.loads(f.schema_arrow.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    assert f.metadata.row_group(0).column(0).has_offset_index  # page index written
    back = pq.read_table(tmp_path / "x.parquet")
    assert back.column("image").combine_chunks().field("bytes").to_pylist() == images
    assert back.column("image").combine_chunks().field("path")[0].as_py() == "ABCD1000-20.jpg"
    assert back.drop(["image"]).to_pylist() == records
    metadata_only = writers.parquet_table(meta_table(records), None)
    assert metadata_only.column_names == list(schema.COLUMN_NAMES)


def test_features_match_what_datasets_understands():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features.from_dict(writers.hf_features(with_image=True))
    assert isinstance(features["image"], datasets.Image)
    assert features["inferred_ranks"] == datasets.Value("uint8")
    from_yaml = datasets.Features._from_yaml_list(writers.hf_features_yaml("parquet", True))
    assert from_yaml == features
    wds = datasets.Features._from_yaml_list(writers.hf_features_yaml("webdataset", True))
    assert isinstance(wds["jpg"], datasets.Image) and wds["json"]["coord-lat"] == datasets.Value("float64")


@pytest.mark.parametrize("name, size", [("ABCD1000-20.jpg", 0), ("X.json", 1), ("A" * 95 + ".jpg", 123_456_789)])
def test_ustar_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert writers.ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    with pytest.raises(ValueError, match="does not fit"):
        writers.ustar_header("B" * 101 + ".jpg", 1)
