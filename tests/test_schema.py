import hashlib

import pyarrow as pa
import pytest

from bioscan5m_hf import schema


def test_columns_official_order_and_types():
    assert len(schema.COLUMNS) == 23
    assert schema.COLUMN_NAMES[:3] == ("processid", "sampleid", "taxon")
    assert schema.COLUMN_NAMES[-3:] == ("split", "index_bioscan_1M_insect", "chunk")
    s = schema.arrow_schema()
    assert s.field("coord-lat").type == pa.float64()
    assert s.field("inferred_ranks").type == pa.uint8()
    assert s.field("index_bioscan_1M_insect").type == pa.int64()
    assert not s.field("processid").nullable and s.field("species").nullable


def test_split_counts_sum_to_release():
    assert schema.TOTAL_RECORDS == 5_150_850
    assert set(schema.SPLIT_RECORDS) == set(schema.SPLITS)


@pytest.mark.parametrize("split, expected", [
    ("train", ("train",)),
    ("validation", ("val",)),
    ("seen", ("train", "val", "test")),
    ("unseen", ("key_unseen", "val_unseen", "test_unseen")),
    ("train+pretrain", ("pretrain", "train")),
    ("all", schema.SPLITS),
    (None, schema.SPLITS),
])
def test_explode_split(split, expected):
    assert schema.explode_split(split) == expected


def test_explode_split_rejects_unknown():
    with pytest.raises(ValueError, match="'bogus'"):
        schema.explode_split("train+bogus")


def test_chunk_rule():
    pid = "AACTA1040-20"
    h = hashlib.md5(pid.encode()).hexdigest()
    assert schema.chunk_for(pid, "pretrain") == h[:2]
    assert schema.chunk_for(pid, "train") == h[:1]
    assert schema.chunk_for(pid, "other_heldout") == h[:1]
    assert schema.chunk_for(pid, "val") is None
    assert schema.image_relpath("cropped_256", "val", None, pid) == f"bioscan5m/images/cropped_256/val/{pid}.jpg"
    assert schema.image_relpath("cropped", "train", "a", pid) == f"bioscan5m/images/cropped/train/a/{pid}.jpg"


@pytest.mark.parametrize("name, package", [
    ("BIOSCAN_5M_cropped_256.zip", "cropped_256"),
    ("BIOSCAN_5M_cropped_256_pretrain.01.zip", "cropped_256"),
    ("BIOSCAN_5M_cropped_256_pretrain.zip", "cropped_256"),
    ("BIOSCAN_5M_original_256_eval.zip", "original_256"),
    ("BIOSCAN_5M_cropped.02.zip", "cropped"),
    ("BIOSCAN_5M_original_full.05.zip", "original_full"),
    ("BIOSCAN_5M_original_full.06.zip", None),
    ("BIOSCAN_5M_cropped_256_test.zip", None),
    ("other.zip", None),
])
def test_package_of_zip(name, package):
    assert schema.package_of_zip(name) == package


def test_shard_relpath():
    assert schema.shard_relpath("webdataset", "cropped_256", "train", 3) == \
        "cropped_256/train/bioscan5m-cropped_256-train-000003.tar"
    assert schema.shard_relpath("parquet", "metadata", "val", 0).endswith("/bioscan5m-metadata-val-000000.parquet")
