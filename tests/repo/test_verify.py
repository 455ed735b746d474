import json
import shutil

import pyarrow.parquet as pq

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main
from bioscan5m_hf.convert import writers
from bioscan5m_hf.repo.dali import dali_index_path
from bioscan5m_hf.repo.manifest import open_repos
from bioscan5m_hf.repo.record_index import build_record_index, index_relpath, write_record_index
from bioscan5m_hf.repo.verify import check_record, verify
from bioscan5m_hf.util import file_digest


def manifest(out, repo):
    return json.loads((out / repo / schema.MANIFEST).read_text())


def save(out, repo, data):
    (out / repo / schema.MANIFEST).write_text(json.dumps(data))


def relist(out, repo, rel, num_records):
    """Update a shard's manifest entry after rewriting it, so only deeper checks can tell."""
    data = manifest(out, repo)
    config, split = rel.split("/")[:2]
    entry = next(s for s in data["configs"][config][split]["shards"] if s["path"] == rel)
    data["configs"][config][split]["num_records"] += num_records - entry["num_records"]
    entry.update(num_records=num_records, num_bytes=(out / repo / rel).stat().st_size,
                 sha256=file_digest(out / repo / rel))
    index = dali_index_path(rel).as_posix()
    if index in data["files"]:  # write_tar rewrote the tar's DALI index too
        data["files"][index] = {"num_bytes": (out / repo / index).stat().st_size,
                                "sha256": file_digest(out / repo / index)}
    save(out, repo, data)
    # ... and the per-record index follows the rewritten shard
    opened = open_repos(out / repo)[data["format"]]
    table = build_record_index(opened, config, opened.read_table(schema.CSV_ORDER, ["processid"])["processid"])
    path = out / repo / index_relpath(config)
    write_record_index(table, path)
    data["files"][index_relpath(config)] = {"num_bytes": path.stat().st_size, "sha256": file_digest(path)}
    save(out, repo, data)


def shard(out, repo, config="cropped_256", split="pretrain", k=0):
    return manifest(out, repo)["configs"][config][split]["shards"][k]["path"]


def test_a_good_conversion_passes(out, capsys):
    report = verify(out, decode=True)
    assert report.ok, report.problems
    assert report.records > 0 and report.files > 0
    assert main(["verify", str(out), "--decode"]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    assert verify(out / schema.WDS_REPO).ok


def test_deleted_shard(out, capsys):
    rel = shard(out, schema.WDS_REPO)
    (out / schema.WDS_REPO / rel).unlink()
    report = verify(out)
    assert f"{schema.WDS_REPO}/{rel}: missing" in report.problems
    assert main(["verify", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_truncated_shard(out):
    rel = shard(out, schema.PARQUET_REPO)
    path = out / schema.PARQUET_REPO / rel
    path.write_bytes(path.read_bytes()[:-500])
    assert any(p.startswith(f"{schema.PARQUET_REPO}/{rel}: is ") and "truncated" in p for p in verify(out).problems)


def test_flipped_byte(out):
    rel = shard(out, schema.WDS_REPO, split="train")
    path = out / schema.WDS_REPO / rel
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x01
    path.write_bytes(bytes(data))
    assert any(p.startswith(f"{schema.WDS_REPO}/{rel}: sha256") for p in verify(out).problems)


def tar_records(path):
    import tarfile

    with tarfile.open(path) as tar:
        members = tar.getmembers()
        out = []
        for jpg, meta in zip(members[::2], members[1::2]):
            out.append((json.loads(tar.extractfile(meta).read()), tar.extractfile(jpg).read()))
    return out


def test_duplicated_record(out):
    a, b = shard(out, schema.WDS_REPO, k=0), shard(out, schema.WDS_REPO, k=1)
    first = tar_records(out / schema.WDS_REPO / a)[0]
    records = tar_records(out / schema.WDS_REPO / b) + [first]
    writers.write_tar(out / schema.WDS_REPO / b, [r for r, _ in records], [i for _, i in records])
    relist(out, schema.WDS_REPO, b, len(records))
    problems = verify(out).problems
    assert any(f"record {first[0]['processid']} is also in" in p and "duplicate" in p for p in problems)


def test_tar_and_parquet_mismatch(out):
    rel = shard(out, schema.PARQUET_REPO, split="train")
    path = out / schema.PARQUET_REPO / rel
    table = pq.read_table(path)
    dropped = table.column("processid")[0].as_py()
    writers.write_parquet(path, table.slice(1), with_image=True)
    relist(out, schema.PARQUET_REPO, rel, table.num_rows - 1)
    problems = verify(out).problems
    assert any(p.startswith("cropped_256/train: Parquet and tar hold different records") and dropped in p
               for p in problems)


def test_decode_finds_a_broken_image_and_a_bad_value(out):
    rel = shard(out, schema.WDS_REPO, split="val")
    path = out / schema.WDS_REPO / rel
    records = tar_records(path)
    records[0] = (records[0][0], b"\xff\xd8not really a jpeg")
    records[1] = ({**records[1][0], "coord-lat": "north"}, records[1][1])
    writers.write_tar(path, [r for r, _ in records], [i for _, i in records])
    relist(out, schema.WDS_REPO, rel, len(records))
    assert verify(out).ok  # the files match the manifest ...
    problems = verify(out, decode=True).problems  # ... but not the content
    assert any(f"record {records[0][0]['processid']}: image does not decode" in p for p in problems)
    assert any(f"record {records[1][0]['processid']}: coord-lat: 'north' is not a finite number" in p
               for p in problems)


def test_unlisted_shard(out):
    rel = shard(out, schema.WDS_REPO)
    extra = (out / schema.WDS_REPO / rel).with_name("bioscan5m-cropped_256-pretrain-000099.tar")
    shutil.copy(out / schema.WDS_REPO / rel, extra)
    assert any("000099.tar: not listed in the manifest" in p for p in verify(out).problems)


def test_check_record():
    record = {name: None for name in schema.COLUMN_NAMES} | {
        "processid": "AB12-20", "sampleid": "S", "dna_barcode": "ACGT", "split": "val", "inferred_ranks": 0}
    assert check_record(record, "val") == []
    assert check_record(record, "test") == ["split is 'val' but the shard is in 'test'"]
    assert "chunk" in check_record(record | {"split": "train"}, "train")[0]
