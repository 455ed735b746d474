import csv
import hashlib
import re
import zipfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bioscan5m_hf import schema
from bioscan5m_hf.tools.sample import split_counts, write_sample


def read_rows(root):
    with open(root / schema.METADATA_CSV, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


@pytest.fixture(scope="module")
def metadata_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    write_sample(root, 3000, 3, images=False, show_progress=False)
    return read_rows(root)


def test_split_counts_real_proportions_and_every_split_present():
    counts = split_counts(400)
    assert sum(counts.values()) == 400
    assert all(n >= 4 for n in counts.values())
    big = split_counts(1_000_000)
    for split, n in big.items():
        assert abs(n / 1_000_000 - schema.SPLIT_RECORDS[split] / schema.TOTAL_RECORDS) < 1e-4
    with pytest.raises(ValueError):
        split_counts(5)


def test_csv_header_and_formatting(metadata_only):
    header, rows = metadata_only
    assert tuple(header) == schema.COLUMN_NAMES
    assert len(rows) == 3000
    assert Counter(r["split"] for r in rows) == Counter(split_counts(3000))
    assert len({r["processid"] for r in rows}) == 3000
    for name in ("coord-lat", "image_measurement_value", "index_bioscan_1M_insect"):
        assert any(r[name] == "" for r in rows)
    assert all(re.fullmatch(r"\d+\.0", r["index_bioscan_1M_insect"]) for r in rows if r["index_bioscan_1M_insect"])
    assert all(re.fullmatch(r"\d+\.0", r["image_measurement_value"]) for r in rows if r["image_measurement_value"])
    for r in rows:
        expected = schema.chunk_for(r["processid"], r["split"]) or ""
        assert r["chunk"] == expected
    assert any(r["chunk"].startswith("0") for r in rows)  # leading zeros kept as text
    assert all(re.fullmatch(r"BOLD:[A-Z]{3}\d{4}", r["dna_bin"]) for r in rows if r["dna_bin"])


def test_every_nullable_column_has_missing_values(tmp_path):
    for records in (40, 400):
        root = tmp_path / str(records)
        write_sample(root, records, 0, images=False, show_progress=False)
        _, rows = read_rows(root)
        for col in schema.COLUMNS:
            empties = sum(r[col.name] == "" for r in rows)
            assert (empties > 0) == col.nullable, (records, col.name)


def test_labels_are_realistic(metadata_only):
    _, rows = metadata_only
    pretrain = [r for r in rows if r["split"] == "pretrain"]
    assert all(r["genus"] == r["species"] == r["subfamily"] == "" for r in pretrain)
    assert {bool(r["family"]) for r in pretrain} == {True, False}  # some only down to order
    seen = [r for r in rows if r["split"] in schema.SEEN_SPLITS]
    assert all(r["species"] and "sp." not in r["species"] for r in seen)
    unseen = [r for r in rows if r["split"] in schema.UNSEEN_SPLITS]
    assert all(" sp. " in r["species"] for r in unseen)
    heldout = [r for r in rows if r["split"] == "other_heldout"]
    assert all("_gen" in r["genus"] for r in heldout)
    assert any(r["subfamily"].startswith("unassigned ") for r in rows)
    for r in rows:  # taxon is the most specific rank
        labelled = [r[k] for k in schema.RANKS if r[k] and not r[k].startswith("unassigned")]
        assert r["taxon"] == (labelled[-1] if labelled else "")
    # Seen species are shared between train and test (closed world); unseen ones are not in train.
    train_species = {r["species"] for r in rows if r["split"] == "train"}
    assert {r["species"] for r in rows if r["split"] == "test"} & train_species
    assert not {r["species"] for r in unseen} & train_species


def test_barcodes_are_realistic(metadata_only):
    _, rows = metadata_only
    codes = [r["dna_barcode"] for r in rows]
    lengths = [len(c.rstrip("N")) for c in codes]
    assert min(lengths) < 400 and max(lengths) > 1000
    assert Counter(lengths).most_common(1)[0][0] == 658
    assert any(re.search(r"N+$", c) for c in codes)
    assert any(re.search(r"[RYKMSW]", c) for c in codes)
    assert len(set(codes)) < 0.8 * len(codes)  # exact duplicates are common
    # Same species: a few % apart; different species: about 75 % apart (random prototypes).
    by_species = {}
    for r in rows:
        if r["species"]:
            by_species.setdefault(r["species"], []).append(np.frombuffer(r["dna_barcode"][:300].encode(), np.uint8))
    within = [np.mean(a != b) for seqs in by_species.values() for a, b in zip(seqs, seqs[1:])]
    firsts = [s[0] for s in by_species.values()]
    between = [np.mean(a != b) for a, b in zip(firsts, firsts[1:])]
    assert np.mean(within) < 0.05 < 0.5 < np.mean(between)


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 1), (b, 1), (c, 2)):
        write_sample(root, 60, seed, ("cropped_256",), image_size=32, show_progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / schema.METADATA_CSV).read_bytes() != (c / schema.METADATA_CSV).read_bytes()


def test_zips_hold_the_folder_images_under_official_names(release):
    zips = sorted(p.name for p in release.glob("*.zip"))
    assert "BIOSCAN_5M_cropped_256_train.zip" in zips
    assert "BIOSCAN_5M_cropped_256_eval.zip" in zips
    assert {"BIOSCAN_5M_original_256_pretrain.01.zip", "BIOSCAN_5M_original_256_pretrain.02.zip"} <= set(zips)
    members = 0
    for name in zips:
        assert schema.package_of_zip(name)
        with zipfile.ZipFile(release / name) as zf:
            for info in zf.infolist():
                assert info.filename.startswith("bioscan5m/images/" + schema.package_of_zip(name) + "/")
                assert zf.read(info) == (release / info.filename).read_bytes()
                members += 1
    assert members == 2 * 240


def test_image_sizes_per_package(tmp_path):
    write_sample(tmp_path, 8, 0, schema.PACKAGES, layout=("folders",), show_progress=False)
    sizes = {p: [Image.open(f).size for f in (tmp_path / "bioscan5m/images" / p).rglob("*.jpg")]
             for p in schema.PACKAGES}
    assert all(s == (1024, 768) for s in sizes["original_full"])
    assert all(s == (341, 256) for s in sizes["original_256"])
    assert all(min(s) == 256 and s[0] > s[1] for s in sizes["cropped_256"])
    assert all(min(s) > 256 for s in sizes["cropped"])
    assert all(len(v) == 8 for v in sizes.values())
    jpeg = next((tmp_path / "bioscan5m/images/cropped_256").rglob("*.jpg")).read_bytes()
    assert jpeg[:3] == b"\xff\xd8\xff"


def test_images_carry_a_class_signal(tmp_path):
    write_sample(tmp_path, 200, 0, ("cropped_256",), image_size=32, layout=("folders",), show_progress=False)
    _, rows = read_rows(tmp_path)
    colour = {}
    for r in rows:
        if not r["order"]:
            continue
        path = tmp_path / schema.image_relpath("cropped_256", r["split"], r["chunk"] or None, r["processid"])
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        centre = arr[12:20, arr.shape[1] // 2 - 4: arr.shape[1] // 2 + 4].mean(axis=(0, 1))
        colour.setdefault(r["order"], []).append(centre)
    means = {k: np.mean(v, axis=0) for k, v in colour.items() if len(v) >= 3}
    spread = np.mean([np.std(v, axis=0).mean() for k, v in colour.items() if len(v) >= 3])
    gaps = [np.abs(means[a] - means[b]).max() for a in means for b in means if a < b]
    assert len(means) >= 3 and min(gaps) > spread  # orders are told apart by colour


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="package"):
        write_sample(tmp_path, 10, packages=("bogus",))
    with pytest.raises(ValueError, match="layout"):
        write_sample(tmp_path, 10, layout=("tape",))


def test_processids_hash_to_their_chunk_folders(release):
    for path in (release / "bioscan5m/images/cropped_256/pretrain").rglob("*.jpg"):
        assert path.parent.name == hashlib.md5(path.stem.encode()).hexdigest()[:2]


def test_an_interrupted_sample_leaves_no_csv(tmp_path, monkeypatch):
    """The CSV is written last: a release with one has every image, so the benchmarks and the
    tests, which reuse a release that has its CSV, never take up a half-written one."""
    from bioscan5m_hf.tools import sample

    render, calls = sample.render_jpeg, []

    def render_then_stop(*args):
        calls.append(1)
        if len(calls) > 300:  # past the first batch of 256, whose images are written
            raise RuntimeError("stopped")
        return render(*args)

    monkeypatch.setattr(sample, "render_jpeg", render_then_stop)
    with pytest.raises(RuntimeError, match="stopped"):
        write_sample(tmp_path, 400, 0, ("cropped_256",), image_size=32, layout=("folders",), show_progress=False)
    assert any((tmp_path / "bioscan5m/images").rglob("*.jpg"))
    assert not (tmp_path / schema.METADATA_CSV).exists()
    monkeypatch.setattr(sample, "render_jpeg", render)
    write_sample(tmp_path, 400, 0, ("cropped_256",), image_size=32, layout=("folders",), show_progress=False)
    _, rows = read_rows(tmp_path)
    assert len(rows) == 400 == sum(1 for _ in (tmp_path / "bioscan5m/images").rglob("*.jpg"))
