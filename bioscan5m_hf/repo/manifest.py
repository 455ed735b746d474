"""A converted repo as a reader sees it: its manifest (checked before use) and its shards.

The manifest is data from the repo, so it is checked like any input: shard paths must be plain
relative shard names of the config and split that list them (no ``pipe:``, URL, absolute path or
``..``), and a ``pipe:`` root is refused, so nothing is ever run from a repo's contents.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq

from .. import schema
from ..errors import RemoteError, ShardError
from ..options import Storage
from .dali import dali_index_path
from .storage import RetryPolicy, ShardCache, Store, redact


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a split, as listed in the manifest, and where to read it."""

    rel: str
    fmt: str
    split: str
    num_records: int
    num_bytes: int
    sha256: str
    store: Store
    index_rel: str | None = None  # the tar's DALI index, where the manifest lists one

    @property
    def path(self) -> str:
        """Where the shard is, for messages: a local path or a URL without credentials."""
        return str(self.store.local_path(self.rel)) if not self.store.remote else redact(self.store.url(self.rel))

    def open(self):
        return self.store.open(self.rel, self.num_bytes, self.sha256)


@dataclass
class Repo:
    """A converted repo (``BIOSCAN-5M`` or ``BIOSCAN-5M-wds``), local or remote, and its manifest."""

    store: Store
    manifest: dict

    @property
    def root(self):
        return self.store.local_path("") if not self.store.remote else redact(self.store.root)

    @property
    def name(self) -> str:
        return self.store.root.rstrip("/").rsplit("/", 1)[-1]

    @property
    def fmt(self) -> str:
        return self.manifest["format"]

    @property
    def configs(self) -> dict:
        return self.manifest["configs"]

    def shards(self, config: str, splits: Sequence[str]) -> list[ShardInfo]:
        """Shards of ``config`` for ``splits``, in split order then shard order."""
        if config not in self.configs:
            raise ValueError(f"{self.root}: no config {config!r} (have {', '.join(self.configs)})")
        out = []
        for split in splits:
            for s in self.configs[config].get(split, {}).get("shards", []):
                index = dali_index_path(s["path"]).as_posix() if self.fmt == "webdataset" else None
                out.append(ShardInfo(s["path"], self.fmt, split, s["num_records"], s["num_bytes"], s["sha256"],
                                     self.store, index if index in self.manifest.get("files", {}) else None))
        return out

    def read_table(self, rel: str, columns: Sequence[str]):
        """A small Parquet side file of the repo (e.g. :data:`schema.CSV_ORDER`)."""
        source = self.store.local_path(rel) if not self.store.remote else io.BytesIO(self.store.read_bytes(rel))
        return pq.read_table(source, columns=list(columns))


def check_local_root(root) -> None:
    """Refuse roots that would run a command (webdataset's ``pipe:`` URLs) or are not local paths."""
    text = str(root)
    if text.startswith("pipe:"):
        raise ValueError(f"refusing {text[:40]!r}: pipe: URLs run shell commands")


def open_repo(store: Store) -> Repo:
    where = redact(store.url(schema.MANIFEST))
    try:
        manifest = json.loads(store.read_bytes(schema.MANIFEST).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(store.root)}: not a converted repo (no {schema.MANIFEST})") from None
    except ValueError as e:
        raise ShardError(f"{where}: not valid JSON ({e})") from None
    check_manifest(manifest, where)
    return Repo(store, manifest)


def check_manifest(manifest: dict, where) -> None:
    """A manifest is data from the repo: its shard paths must be plain relative shard names."""
    if manifest.get("format") not in schema.FORMATS:
        raise ShardError(f"{where}: unknown format {manifest.get('format')!r}")
    suffix = schema.FORMAT_SUFFIX[manifest["format"]]
    for config, splits in manifest.get("configs", {}).items():
        for split, info in splits.items():
            for shard in info.get("shards", []):
                path = shard.get("path", "")
                if not schema.SHARD_PATH_PATTERN.match(path) or not path.endswith(suffix) \
                        or not path.startswith(f"{config}/{split}/"):
                    raise ShardError(f"{where}: shard path {path[:80]!r} is not a {suffix} shard of {config}/{split}")


def open_repos(root, storage: Storage | None = None) -> dict[str, Repo]:
    """The converted repos at ``root``: the ``OUT`` folder of ``convert`` or one repo folder, local
    or a URL (``hf://datasets/ORG/NAME[@rev]``, ``https://...``, ``s3://...``), read as ``storage``
    says."""
    check_local_root(root)
    storage = storage or Storage()
    store = Store(str(root), storage.storage_options or {}, storage.retry or RetryPolicy(),
                  ShardCache(storage.cache_dir, storage.cache_limit) if storage.cache_dir else None, storage.verify)
    if store.exists(schema.MANIFEST):
        repo = open_repo(store)
        return {repo.fmt: repo}
    repos = {}
    for fmt, name in schema.FORMAT_REPOS.items():
        child = store.child(name)
        if child.exists(schema.MANIFEST):
            repos[fmt] = open_repo(child)
    if not repos:
        try:  # every probe was absent or denied: say which (bad credentials are denied)
            store.read_bytes(schema.MANIFEST)
        except RemoteError as e:
            if "access denied" not in str(e):
                raise
            raise RemoteError(f"{e} (object stores also answer 403 for a missing key to a client that may not "
                              f"list the bucket)") from None
        except FileNotFoundError:
            pass
        raise FileNotFoundError(f"{redact(store.root)}: no converted repo ({schema.PARQUET_REPO}/ or "
                                f"{schema.WDS_REPO}/ with a {schema.MANIFEST}, or a {schema.MANIFEST} here)")
    return repos
