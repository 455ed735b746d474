"""Damaged and hostile input: clear errors naming the file, nothing executed, nothing written outside."""

import io
import json
import os
import pickle
import tarfile
import warnings
import zipfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from bioscan5m_hf import StreamingBIOSCAN5M, schema
from bioscan5m_hf.convert import ConvertOptions, convert
from bioscan5m_hf.convert.release import open_image_source
from bioscan5m_hf.errors import ReleaseError, ShardError
from bioscan5m_hf.repo.manifest import open_repos
from bioscan5m_hf.tools.sample import write_sample
from bioscan5m_hf.util import file_digest

from ..conftest import stream_loader

MARKER = "bioscan5m-hf-pwned"


class Payload:
    """Unpickling this would create a marker file: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def wds_shard(out, split="val"):
    data = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    return data["configs"]["cropped_256"][split]["shards"][0]["path"]


def rewrite_tar(out, rel, members):
    """Replace a tar shard with ``members`` [(name, bytes, or "symlink")] and fix up the manifest."""
    path = out / schema.WDS_REPO / rel
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    config, split = rel.split("/")[:2]
    entry = manifest["configs"][config][split]["shards"][0]
    entry.update(num_bytes=path.stat().st_size, sha256=file_digest(path))
    (out / schema.WDS_REPO / schema.MANIFEST).write_text(json.dumps(manifest))


def members_of(out, rel):
    with tarfile.open(out / schema.WDS_REPO / rel) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


@pytest.mark.parametrize("ext", ["pickle", "pyd", "pth"])
def test_pickle_members_are_refused_never_loaded(out, tmp_path, ext):
    rel = wds_shard(out)
    members = members_of(out, rel)
    key = members[0][0].split(".")[0]
    marker = tmp_path / MARKER
    members.insert(2, (f"{key}.{ext}", pickle.dumps(Payload(str(marker)))))
    rewrite_tar(out, rel, members)
    with pytest.raises(ShardError, match=rf"{rel}: member {key}\.{ext}: unexpected member"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val"))
    with warnings.catch_warnings(record=True):
        ds = StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val", on_error="skip")
        assert list(ds) == [] and ds.skipped == {str(out / schema.WDS_REPO / rel): len(members) // 2}
    assert not marker.exists()


def test_truncated_tar_names_the_shard_and_skip_counts(out):
    rel = wds_shard(out, "pretrain")
    path = out / schema.WDS_REPO / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match=rf"{rel}"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="pretrain", modality="dna"))
    ds = StreamingBIOSCAN5M(out / schema.WDS_REPO, split="pretrain", modality="dna", on_error="skip")
    with pytest.warns(RuntimeWarning, match=rf"skipped \d+ record\(s\) of .*{rel}"):
        got = list(ds)
    assert 0 < ds.skipped[str(path)] < len(ds) and len(got) == len(ds) - ds.skipped[str(path)]


def test_corrupt_parquet_names_the_shard_and_row_group(out):
    manifest = json.loads((out / schema.PARQUET_REPO / schema.MANIFEST).read_text())
    rel = manifest["configs"]["cropped_256"]["pretrain"]["shards"][0]["path"]
    path = out / schema.PARQUET_REPO / rel
    column = next(c for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(25))
                  if c.path_in_schema == "dna_barcode")
    data = bytearray(path.read_bytes())
    start = column.data_page_offset
    data[start: start + column.total_compressed_size] = bytes(column.total_compressed_size)  # zero its pages
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{rel}: row group 0"):
        list(StreamingBIOSCAN5M(out, split="pretrain"))


def test_sample_missing_a_member_and_odd_member_types(out):
    rel = wds_shard(out)
    members = members_of(out, rel)
    rewrite_tar(out, rel, members[1:])  # the first sample has no .jpg
    with pytest.raises(ShardError, match=rf"{rel}: sample '.*' has no \.jpg member"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val"))
    rewrite_tar(out, rel, [("evil.jpg", "symlink")] + members)
    with pytest.raises(ShardError, match=rf"{rel}: member evil.jpg: not a regular file"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val"))
    rewrite_tar(out, rel, members[:4] + members[:2] + members[4:])  # sample 0 again, third
    with pytest.raises(ShardError, match="appears twice"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val"))  # read by scanning the tar
    # Metadata alone is read through the tar's DALI index, whose places no longer hold what it says.
    with pytest.raises(ShardError, match=rf"{rel}: member .*\.json: not where the shard's index .* says"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val", modality="dna"))


def test_pipe_urls_are_refused(out):
    with pytest.raises(ValueError, match="pipe: URLs run shell commands"):
        StreamingBIOSCAN5M("pipe:curl -s http://example.invalid | tar x")
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    manifest["configs"]["cropped_256"]["val"]["shards"][0]["path"] = f"pipe:touch {MARKER}"
    (out / schema.WDS_REPO / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="is not a tar shard of cropped_256/val"):
        open_repos(out / schema.WDS_REPO)
    manifest["configs"]["cropped_256"]["val"]["shards"][0]["path"] = "../../../etc/passwd"
    (out / schema.WDS_REPO / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="not a tar shard"):
        open_repos(out / schema.WDS_REPO)


def bomb_jpeg(width=9000, height=8000) -> bytes:
    """A tiny JPEG whose header claims a gigantic size (the SOF0 marker's dimensions patched)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_decompression_bombs_are_refused_by_converter_and_loader(tmp_path, out):
    release = tmp_path / "release"
    write_sample(release, 40, 1, ("cropped_256",), image_size=32, layout=("folders",), show_progress=False)
    victim = next((release / "bioscan5m/images/cropped_256/val").glob("*.jpg"))
    victim.write_bytes(bomb_jpeg())
    with pytest.raises(ReleaseError, match=rf"{victim.name}: image of {victim.stem} is 9000 x 8000 pixels"):
        convert(release, tmp_path / "o", ConvertOptions(show_progress=False))
    victim.write_bytes(bomb_jpeg(30000, 30000))  # past Pillow's own limit: refused while opening
    with pytest.raises(ReleaseError, match=rf"image of {victim.stem} is unreadable .*decompression bomb"):
        convert(release, tmp_path / "o1", ConvertOptions(show_progress=False))
    victim.write_bytes(b"GIF89a not a jpeg")
    with pytest.raises(ReleaseError, match=rf"image of {victim.stem} is unreadable"):
        convert(release, tmp_path / "o2", ConvertOptions(show_progress=False))

    rel = wds_shard(out)
    members = members_of(out, rel)
    members[0] = (members[0][0], bomb_jpeg())
    rewrite_tar(out, rel, members)
    key = members[0][0].split(".")[0]
    with pytest.raises(ShardError, match=rf"{rel}: member {key}\.jpg: image does not decode .*over the"):
        list(StreamingBIOSCAN5M(out / schema.WDS_REPO, split="val"))
    loader = stream_loader(out / schema.WDS_REPO, "val", batch_size=4, num_workers=0, on_error="skip")
    with pytest.warns(RuntimeWarning, match=f"member {key}.jpg does not decode"):
        got = [p for b in loader for p in b["processid"]]
    assert key not in got and len(got) == len(members) // 2 - 1


@pytest.mark.parametrize("name, message", [
    ("bioscan5m/images/cropped_256/../../../evil.jpg", "unsafe path"),
    ("/etc/evil.jpg", "unsafe path"),
    ("bioscan5m/images/cropped_256/val/link.jpg", "symbolic link"),
])
def test_unsafe_zip_members_are_refused(tmp_path, name, message):
    path = tmp_path / "BIOSCAN_5M_cropped_256_eval.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if message == "symbolic link":
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, b"/etc/passwd")
    with pytest.raises(ReleaseError, match=rf"BIOSCAN_5M_cropped_256_eval\.zip: member .* {message}"):
        open_image_source(tmp_path, "cropped_256")
    assert not (tmp_path.parent / "evil.jpg").exists() and not os.path.exists("/etc/evil.jpg")
