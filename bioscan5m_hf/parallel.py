"""Run independent tasks in worker processes, results in task order (so output stays deterministic)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


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
