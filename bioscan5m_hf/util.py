"""Small helpers used across the stages: progress bars, an ordered process pool, atomic writes,
file digests and argument checks."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def progress(*, total: int | None, desc: str, unit: str = "it", disable: bool = False):
    """A tqdm bar, quiet when asked or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)


def imap_ordered(fn: Callable[[T], R], tasks: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, tasks)`` over ``workers`` spawned processes (in-process when ``workers <= 1``).

    Results come back in task order whatever the workers' timing, so anything written from them is
    the same for any ``workers``. Spawned (not forked) workers stay safe next to Arrow's threads.
    """
    if workers <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=1)


def temporary_name(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before it becomes ``path``: unique per
    process (parallel tasks may write the same file), and matched by :data:`TEMPORARY_GLOB`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


#: Matches every :func:`temporary_name` (left behind by a crash, removed on the next run).
TEMPORARY_GLOB = ".*.tmp-*"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` only if the block succeeds, so a
    half-written file never stands under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a whole file atomically (see :func:`atomic_path`); text is written as UTF-8."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", block: int = 1 << 20) -> str:
    """Hex digest of a file, read in blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def check_choice(value, arg: str, choices: Sequence) -> object:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming the argument (as
    torchvision's ``verify_str_arg``).

    >>> check_choice("raise", "on_error", ("raise", "skip"))
    'raise'
    >>> check_choice("ignore", "on_error", ("raise", "skip"))
    Traceback (most recent call last):
    ...
    ValueError: on_error must be one of 'raise', 'skip'; got 'ignore'
    """
    if value not in choices:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def process_tree(pid: int) -> list[int]:
    """``pid`` and the processes it started, and those they started, and so on (Linux ``/proc``;
    processes that end meanwhile are left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree = [pid]
    for p in tree:  # grows as it goes
        tree += children.get(p, [])
    return tree
