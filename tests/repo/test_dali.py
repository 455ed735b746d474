"""The DALI webdataset index written next to each tar: its format, read back against the tar."""

import json
import tarfile

import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.repo.dali import VERSION, dali_index_path
from bioscan5m_hf.repo.verify import verify


def parse(text: str) -> list[list[tuple[str, int, int, str]]]:
    """DALI's index format: ``v1.2 N`` then per sample ``ext offset size name`` groups."""
    head, *lines = text.rstrip("\n").split("\n")
    version, count = head.split()
    assert version == VERSION and int(count) == len(lines)
    samples = []
    for line in lines:
        f = line.split(" ")
        assert len(f) % 4 == 0
        samples.append([(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f), 4)])
    return samples


def test_every_tar_has_an_index_that_locates_each_member(converted_zips):
    repo = converted_zips.repos["webdataset"]
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    tars = [s["path"] for c in manifest["configs"].values() for v in c.values() for s in v["shards"]]
    assert tars
    for rel in tars:
        idx = dali_index_path(rel).as_posix()
        assert idx in manifest["files"] and idx.endswith(".idx") and idx.split("/")[:2] == rel.split("/")[:2]
        samples = parse((repo / idx).read_text())
        data = (repo / rel).read_bytes()
        with tarfile.open(repo / rel) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        assert sum(len(s) for s in samples) == len(members) and len(samples) == len(members) // 2
        for sample in samples:
            assert [ext for ext, *_ in sample] == ["jpg", "json"]
            assert len({name.split(".")[0] for *_, name in sample}) == 1
            for ext, offset, size, name in sample:
                assert name.endswith("." + ext) and data[offset: offset + size] == members[name]


def test_verify_names_an_index_that_disagrees_with_its_tar(out):
    repo = out / schema.WDS_REPO
    idx = next(repo.rglob("*.idx"))
    lines = idx.read_text().split("\n")
    fields = lines[1].split(" ")
    fields[1] = str(int(fields[1]) + 512)  # the first image's offset, one block off
    idx.write_text("\n".join([lines[0], " ".join(fields), *lines[2:]]))
    report = verify(out)
    assert not report.ok
    rel = idx.relative_to(repo).as_posix()
    assert any(rel in problem and "does not match the members" in problem for problem in report.problems)


# -- DALI's own reader over the repo (the `dali` extra; skipped, saying so, where it is not installed) --


def dali_reads(repo, config: str, split: str, batch_size: int = 16) -> dict[str, tuple[bytes, dict]]:
    """Every sample DALI's ``fn.readers.webdataset`` yields from a split's tars (through the repo's
    ``.idx`` files) in one epoch: processid -> (JPEG bytes, metadata), each record once."""
    nvidia_dali = pytest.importorskip("nvidia.dali", reason="DALI is not installed (scripts/install_dali.sh)")
    from nvidia.dali import fn, pipeline_def

    tars = sorted(str(p) for p in (repo / config / split).glob("*.tar"))

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def read():
        jpeg, meta = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
                                           ext=["jpg", "json"], missing_component_behavior="error", name="reader")
        return jpeg, meta

    pipe = read()
    pipe.build()
    total = pipe.epoch_size("reader")
    seen: dict[str, tuple[bytes, dict]] = {}
    while len(seen) < total:
        jpegs, metas = pipe.run()
        for k in range(min(len(jpegs), total - len(seen))):  # the last batch goes on into the next epoch
            meta = json.loads(metas.at(k).tobytes())
            assert meta["processid"] not in seen, meta["processid"]
            seen[meta["processid"]] = (jpegs.at(k).tobytes(), meta)
    assert nvidia_dali.__version__ and len(seen) == total
    return seen


def test_dali_reads_every_split_of_the_repo_with_the_parquet_bytes(converted_zips):
    import pyarrow.parquet as pq

    wds, parquet = converted_zips.repos["webdataset"], converted_zips.repos["parquet"]
    manifest = json.loads((wds / schema.MANIFEST).read_text())
    for split, info in manifest["configs"]["cropped_256"].items():
        seen = dali_reads(wds, "cropped_256", split)
        want = {}
        for shard in sorted((parquet / "cropped_256" / split).glob("*.parquet")):
            table = pq.read_table(shard, columns=["processid", "image", "species"])
            for pid, image, species in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                want[pid] = (image["bytes"], species)
        assert len(seen) == info["num_records"] == len(want), split
        assert {p: (jpeg, meta["species"]) for p, (jpeg, meta) in seen.items()} == want, split
