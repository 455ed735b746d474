"""The option objects a dataset takes besides the official keywords, one per concern, as MosaicML's
``Stream`` and our own ``ConvertOptions`` do:

- :class:`Storage`: how a root is read (a remote one's cache, credentials, retries, read-ahead,
  checksums);
- :class:`Composition`: what an epoch holds besides every record once (a filter, class-balanced or
  weighted draws, a mixture of repos).

Each is checked when made, so a bad value fails at construction, naming the field.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from .repo.storage import RetryPolicy


@dataclass(frozen=True)
class Storage:
    """How a root is read. Only a remote root (``hf://``, ``https://``, ``s3://``, ...) uses most of it.

    cache_dir, cache_limit
        Keep verified shards in this folder, at most ``cache_limit`` bytes (least recently used
        evicted), so later epochs read from disk; safe to share between workers and jobs. Also where
        the map-style ``BIOSCAN5M(..., download=True)`` copies to (default ``~/.cache/bioscan5m-hf``).
    storage_options
        Passed to fsspec (credentials, ``endpoint_url``, ``anon``).
    verify
        Check streamed (uncached) shards against the manifest's sha256 when read to the end; cached
        shards are always checked.
    retry
        Retries of transient network faults (:class:`~bioscan5m_hf.repo.storage.RetryPolicy`).
    readahead
        With a cache: shards fetched ahead in the background per worker.
    """

    keyword: ClassVar[str] = "storage"

    cache_dir: str | os.PathLike | None = None
    cache_limit: int | None = None
    storage_options: dict | None = None
    verify: bool = False
    retry: RetryPolicy | None = None
    readahead: int = 1

    def local_folder(self) -> Path:
        """Where files fetched from a remote root and the metadata's mapped copy are kept:
        ``cache_dir``, or ``bioscan5m-hf`` in ``$XDG_CACHE_HOME`` (``~/.cache``)."""
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(self.cache_dir or os.path.join(cache, "bioscan5m-hf"))

    def __post_init__(self):
        if self.cache_limit is not None and self.cache_limit <= 0:
            raise ValueError(f"Storage.cache_limit must be a positive number of bytes, got {self.cache_limit}")
        if self.readahead < 0:
            raise ValueError(f"Storage.readahead must be >= 0, got {self.readahead}")


@dataclass(frozen=True)
class Composition:
    """What an epoch holds besides every record of the split once (see :mod:`.stream.sampling`).

    filter
        A ``pyarrow.compute`` expression (``pc.field("order") == "Diptera"``) or a function of a
        ``pyarrow.Table`` of metadata returning a boolean mask: only records passing it are read
        (no image byte of the others); ``len()`` counts them.
    balance, temperature
        Draw class-balanced by this rank (``"species"``, ...) with ``temperature`` (1: natural
        frequencies, 0: uniform over classes); records missing that rank are left out.
    split_weights
        With a ``+``-joined split, each split's share of the draw, e.g. ``{"pretrain": 0.7, "train": 0.3}``.
    source_weights
        With a list of roots (repos with the same configs and splits), each root's share.
    samples_per_epoch
        Records drawn per epoch with one of the above (with replacement; default the record count).
    """

    keyword: ClassVar[str] = "composition"

    filter: object = None
    balance: str | None = None
    temperature: float = 1.0
    split_weights: dict[str, float] | None = None
    source_weights: Sequence[float] | None = None
    samples_per_epoch: int | None = None

    def __post_init__(self):
        from .stream.sampling import Sampling, filter_columns

        if self.filter is not None:
            filter_columns(self.filter)  # the type check, naming the field
        Sampling.make(self)  # the sampling fields' checks


def moved_into(*option_types: type) -> Callable:
    """Decorator: keywords that now live in an option object (a field of :class:`Storage` or
    :class:`Composition`) keep working, with a ``DeprecationWarning`` saying how to pass them now.
    The function's signature (``inspect.signature``, ``help``) stays its own, without them."""
    owner = {f.name: t for t in option_types for f in fields(t)}

    def decorate(fn: Callable) -> Callable:
        name = fn.__qualname__.replace(".__init__", "")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            moved = {k: kwargs.pop(k) for k in list(kwargs) if k in owner}
            for option in option_types:
                mine = {k: v for k, v in moved.items() if owner[k] is option}
                if not mine:
                    continue
                if kwargs.get(option.keyword) is not None:
                    raise TypeError(f"{name}() got {', '.join(mine)} and {option.keyword}=: give them in "
                                    f"{option.keyword}={option.__name__}(...) alone")
                given = ", ".join(f"{k}=..." for k in mine)
                warnings.warn(f"{name}({given}) is deprecated: pass {option.keyword}={option.__name__}({given})",
                              DeprecationWarning, stacklevel=2)
                kwargs[option.keyword] = option(**mine)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def keyword_names(fn: Callable) -> list[str]:
    """The keywords ``fn`` takes, from its signature (so a list of keywords is written once)."""
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


__all__ = ["Storage", "Composition"]
