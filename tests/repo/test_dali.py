"""The DALI webdataset index written next to each tar: its format, read back against the tar."""

import json
import tarfile

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
