"""NVIDIA DALI's webdataset index files (the format of DALI's ``tools/wds2idx.py``), one per tar.

DALI's ``fn.readers.webdataset(paths=..., index_paths=...)`` needs an index per tar to split the
tars among its readers without scanning them. The converter writes one next to each tar (same name,
``.idx``), listed with its sha256 in the manifest; ``verify`` rebuilds it from the tar's headers
and compares. Format: a line ``v1.2 <samples>``, then per sample its members as
``<ext> <data offset> <size> <name>``, space-separated.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

VERSION = "v1.2"


def dali_index_path(tar_path: str | os.PathLike) -> Path:
    """Where DALI looks for a tar's index by default: the same name up to its first dot, ``.idx``."""
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name.split(".", 1)[0] + ".idx")


def dali_index(samples: Sequence[Sequence[tuple[str, int]]]) -> str:
    """The index of a tar whose samples' members (name, size) follow each other as USTAR members
    (a 512-byte header, the data, padding to 512 bytes), as the converter writes them.

    >>> print(dali_index([[("a.jpg", 3), ("a.json", 600)]]), end="")
    v1.2 1
    jpg 512 3 a.jpg json 1536 600 a.json
    """
    lines, offset = [f"{VERSION} {len(samples)}"], 0
    for sample in samples:
        parts = []
        for name, size in sample:
            parts.append(f"{name.split('.', 1)[1]} {offset + tarfile.BLOCKSIZE} {size} {name}")
            offset += tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE)
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def index_of_tar(members: Iterable[tarfile.TarInfo]) -> str:
    """The index DALI's own tool would write for a tar, from its members' headers (regular files
    grouped into samples by the name before the first dot)."""
    samples: list[list[str]] = []
    last = None
    for m in members:
        if not m.isfile():
            continue
        key = m.name.split(".", 1)[0]
        if key != last:
            samples.append([])
            last = key
        samples[-1].append(f"{m.name.split('.', 1)[1]} {m.offset_data} {m.size} {m.name}")
    return "\n".join([f"{VERSION} {len(samples)}", *(" ".join(s) for s in samples)]) + "\n"
