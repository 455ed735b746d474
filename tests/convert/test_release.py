import csv
import shutil
import zipfile
import zlib

import numpy as np
import pyarrow as pa
import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.convert.release import (
    ImageReader,
    find_metadata_csv,
    iter_metadata,
    load_metadata,
    open_image_source,
    vocabularies,
)
from bioscan5m_hf.errors import ReleaseError


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


@pytest.fixture
def rows(release):
    return read_csv(release / schema.METADATA_CSV)


def load(tmp_path, rows):
    path = write_csv(tmp_path / "meta.csv", rows)
    return load_metadata(path, tmp_path / "meta.arrow")


def test_reads_typed_values_identical_to_the_csv(release, tmp_path, rows):
    table = load(tmp_path, rows)
    assert table.schema.equals(schema.arrow_schema())
    assert table.num_rows == len(rows) - 1
    header = rows[0]
    for raw, rec in zip(rows[1:], table.to_pylist()):
        for name, cell in zip(header, raw):
            value = rec[name]
            if cell == "":
                assert value is None, name
            elif name in ("coord-lat", "coord-lon", "image_measurement_value", "area_fraction", "scale_factor"):
                assert value == float(cell)
            elif name in ("inferred_ranks", "index_bioscan_1M_insect"):
                assert value == int(float(cell))
            else:
                assert value == cell


def test_batches_are_streamed(release, rows, tmp_path):
    path = write_csv(tmp_path / "m.csv", rows)
    batches = list(iter_metadata(path, block_bytes=1 << 14))
    assert len(batches) > 3
    assert sum(b.num_rows for b in batches) == len(rows) - 1


def test_finds_the_csv_anywhere_below_the_release(release, tmp_path):
    nested = tmp_path / "downloads" / "x" / schema.METADATA_CSV_NAME
    nested.parent.mkdir(parents=True)
    shutil.copy(release / schema.METADATA_CSV, nested)
    assert find_metadata_csv(tmp_path) == nested
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseError, match="empty: no metadata CSV"):
        find_metadata_csv(tmp_path / "empty")


def col(rows, name):
    return rows[0].index(name)


def test_missing_and_unknown_columns(tmp_path, rows):
    k = col(rows, "dna_bin")
    dropped = [r[:k] + r[k + 1:] for r in rows]
    with pytest.raises(ReleaseError, match=r"meta\.csv: header: missing columns 'dna_bin'"):
        load(tmp_path, dropped)
    extra = [r + ["x"] for r in rows]
    extra[0][-1] = "colour"
    with pytest.raises(ReleaseError, match=r"unknown columns 'colour'"):
        load(tmp_path, extra)


@pytest.mark.parametrize("column, value, message", [
    ("coord-lat", "north", r"row 5, column 'coord-lat': cannot parse 'north' as a number"),
    ("coord-lon", "inf", r"row 5, column 'coord-lon': 'inf' is not a finite number"),
    ("inferred_ranks", "1.5", r"row 5, column 'inferred_ranks': '1.5' is not an integer"),
    ("inferred_ranks", "300", r"row 5, column 'inferred_ranks': '300' is not an integer in \[0, 255\]"),
    ("index_bioscan_1M_insect", "12.5", r"row 5, column 'index_bioscan_1M_insect'"),
    ("split", "training", r"row 5, column 'split': unknown split 'training'"),
    ("processid", "", r"row 5, column 'processid': value is missing"),
    ("processid", "AB.12-20", r"row 5, column 'processid': 'AB.12-20' is not a valid key"),
    ("processid", "__AB12-20", r"row 5, column 'processid': '__AB12-20' is not a valid key .*not starting with '__'"),
    ("dna_barcode", "A" * 70_000, r"row 5, column 'dna_barcode': value is longer than"),
])
def test_unparsable_values_name_file_row_and_column(tmp_path, rows, column, value, message):
    rows[5][col(rows, column)] = value
    with pytest.raises(ReleaseError, match=r"meta\.csv: " + message):
        load(tmp_path, rows)


def test_chunk_not_matching_the_rule(tmp_path, rows):
    k = next(i for i, r in enumerate(rows) if i and r[col(rows, "split")] == "pretrain")
    good = rows[k][col(rows, "chunk")]
    rows[k][col(rows, "chunk")] = "zz"
    with pytest.raises(ReleaseError, match=rf"row {k}, column 'chunk': 'zz' does not match the chunk rule"):
        load(tmp_path, rows)
    rows[k][col(rows, "chunk")] = good
    k2 = next(i for i, r in enumerate(rows) if i and r[col(rows, "split")] == "val")
    rows[k2][col(rows, "chunk")] = "0f"
    with pytest.raises(ReleaseError, match=rf"row {k2}, column 'chunk': '0f' .* \(this split has no chunk folders\)"):
        load(tmp_path, rows)


def test_duplicate_processid(tmp_path, rows):
    rows[9] = list(rows[3])
    with pytest.raises(ReleaseError, match=r"row 9, column 'processid': duplicate processid .* \(rows 3, 9\)"):
        load(tmp_path, rows)


def test_bad_utf8_and_ragged_rows_name_the_file(tmp_path, rows):
    path = write_csv(tmp_path / "meta.csv", rows)
    data = path.read_bytes().replace(b"Arthropoda", b"Arthr\xffpoda", 1)
    path.write_bytes(data)
    with pytest.raises(ReleaseError, match=r"meta\.csv: .*UTF8"):
        load_metadata(path, tmp_path / "x.arrow")
    rows[4] = rows[4][:-2]
    with pytest.raises(ReleaseError, match=r"meta\.csv: .*(columns|Expected)"):
        load(tmp_path, rows)


def test_vocabularies_are_sorted_distinct_labels(tmp_path, rows):
    table = load(tmp_path, rows)
    vocab = vocabularies(table)
    k = col(rows, "species")
    assert vocab["species"] == sorted({r[k] for r in rows[1:] if r[k]})
    assert set(vocab) == set(schema.LABEL_COLUMNS)


def test_image_sources_folders_and_zips_agree(release):
    folders = open_image_source(release, "cropped_256", "folders")
    zips = open_image_source(release, "cropped_256", "zips")
    assert folders.kind == "folders" and zips.kind == "zips"
    assert open_image_source(release, "cropped_256").kind == "folders"  # auto prefers folders
    reader = ImageReader(zips.archives)
    rels = list(zips.members)
    assert len(rels) == 240
    for rel in rels[:50]:
        ref_f, size_f = folders.locate(rel)
        ref_z, size_z = zips.locate(rel)
        assert size_f == size_z
        assert reader.read(ref_z, rel) == ImageReader().read(ref_f) == (release / rel).read_bytes()
    assert folders.locate("bioscan5m/images/cropped_256/val/NOPE-1.jpg") is None
    with pytest.raises(ReleaseError, match="no images for package 'cropped'"):
        open_image_source(release, "cropped")


def test_zip_deflated_members_and_corruption(tmp_path):
    data = bytes(range(256)) * 40
    path = tmp_path / "BIOSCAN_5M_cropped_256_eval.zip"
    rel = "bioscan5m/images/cropped_256/val/X1-20.jpg"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(rel, data)
    source = open_image_source(tmp_path, "cropped_256")
    ref, size = source.locate(rel)
    assert ref.method == zipfile.ZIP_DEFLATED and size == len(data)
    assert ImageReader(source.archives).read(ref, rel) == data
    bad = ref._replace(crc=zlib.crc32(data) ^ 1)
    with pytest.raises(ReleaseError, match=r"BIOSCAN_5M_cropped_256_eval\.zip: member .*X1-20\.jpg is corrupt"):
        ImageReader(source.archives).read(bad, rel)
    with pytest.raises(ReleaseError, match="no local file header"):
        ImageReader(source.archives).read(ref._replace(offset=5), rel)


def test_unreadable_zip_is_named(tmp_path):
    (tmp_path / "BIOSCAN_5M_cropped_256_train.zip").write_bytes(b"not a zip")
    with pytest.raises(ReleaseError, match=r"BIOSCAN_5M_cropped_256_train\.zip: not a readable zip"):
        open_image_source(tmp_path, "cropped_256")


def test_take_rows_matches_take_across_chunks(release, tmp_path):
    from bioscan5m_hf.convert.release import take_rows

    table = load_metadata(release / schema.METADATA_CSV, tmp_path / "m.arrow", block_bytes=1 << 14)
    assert table.column("processid").num_chunks > 3
    rows = np.random.default_rng(0).permutation(table.num_rows)[:100]
    assert take_rows(table, rows).to_pylist() == table.take(pa.array(rows)).to_pylist()
    assert take_rows(table, np.array([], dtype=np.int64)).num_rows == 0
