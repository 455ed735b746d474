"""Where a converted repo lives: a local folder or a URL (``hf://``, ``https://``, ``s3://``, ``gs://``...).

Remote repos are read through one code path: fsspec's ``cat_file(path, start, end)`` (Hugging Face's
``HfFileSystem`` for ``hf://``, aiohttp for ``https://``, s3fs / gcsfs where installed), one bounded
byte range at a time, so that a job reads only the shards its records live in. Around it:

- retries of transient faults (connection resets, timeouts, HTTP 429 and 5xx) with exponential
  backoff and jitter, or as long as a 429 or 503 says to wait (its `Retry-After` or `RateLimit`
  header); a read cut off mid-range is retried from where it stopped, and a server that
  ignores ``Range`` is re-read and skipped to the offset; permanent faults (404, 401/403, a checksum
  mismatch) stop at once with an error naming the URL, with any credentials taken out of it;
- sequential reads are checked against the manifest's sha256 once a shard has been read to its end
  (``verify=True``; always for the shard cache);
- an optional shard cache (:class:`ShardCache`): content-addressed files, written to a temporary
  name and renamed when complete and verified, evicted least-recently-used beyond a byte limit,
  safe for several processes and jobs sharing one folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import errno
import fcntl
import gc
import hashlib
import io
import os
import random
import re
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import RemoteError, ShardError, UnreachableError
from ..util import atomic_path

#: Bytes per ranged request when reading a shard sequentially: large enough that one rank reading
#: at a fast job's pace stays well within the Hub's request limits (each ranged read of a file is a
#: "resolver" request; README, "Request budget"; BENCHMARKS.md, ``requests``), two of them in memory
#: per open shard (the one read and the one fetched ahead).
CHUNK_BYTES = 16 << 20
URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_url(root) -> bool:
    return bool(URL_PATTERN.match(str(root)))


def redact(url: str) -> str:
    """A URL fit for logs and errors: no user, password or query string (where tokens hide)."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient faults: ``tries`` attempts, delays ``base * 2**k`` (capped) with jitter."""

    tries: int = 8
    base: float = 0.5
    cap: float = 20.0
    timeout: float = 60.0  # seconds without data before a request counts as stalled

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** attempt) * (0.5 + random.random() / 2)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status_code", None)


def asked_wait(exc: BaseException, cap: float = 600.0) -> float | None:
    """Seconds a throttled or unavailable server asks us to wait before the next request (429/503):
    its ``Retry-After`` (seconds or an HTTP date), or the reset time of an exhausted ``RateLimit``
    header (the IETF draft the Hub follows: ``"api";r=0;t=55``), at most ``cap``; None if it says
    nothing.

    >>> class Throttled(Exception):
    ...     status, headers = 429, {"RateLimit": '"resolvers";r=0;t=42'}
    >>> asked_wait(Throttled()), asked_wait(type("E", (Exception,), {"headers": {"Retry-After": "3"}})())
    (42.0, 3.0)
    """
    headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    headers = {str(k).lower(): str(v) for k, v in headers.items()}
    waits = []
    retry_after = headers.get("retry-after", "").strip()
    if retry_after.isdigit():
        waits.append(float(retry_after))
    elif retry_after:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = email.utils.parsedate_to_datetime(retry_after)
            waits.append(max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()))
    if "ratelimit" in headers:
        from huggingface_hub.utils import parse_ratelimit_headers

        info = parse_ratelimit_headers(headers)
        if info is not None and info.remaining == 0:
            waits.append(float(info.reset_in_seconds))
    return min(cap, max(waits)) if waits else None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: network trouble, timeouts, throttling and server errors (not 404/401/403)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError, EOFError)):
        return True
    name = type(exc).__name__  # aiohttp's and botocore's own classes (EndpointConnectionError, ReadTimeoutError)
    return isinstance(exc, OSError) or any(word in name for word in ("Client", "Payload", "Disconnect", "Connect",
                                                                     "Timeout"))


#: Filesystem objects this process opened. Before it forks (DataLoader workers), garbage among them
#: is collected here: collected in a child instead, its finalizer would close the parent's HTTP
#: session through the parent's event loop, which does not run there, and fsspec then waits a full
#: second per session (seen as a 1-2 s first batch after an earlier remote loader).
_OPENED: weakref.WeakSet = weakref.WeakSet()


def _collect_before_fork() -> None:
    if len(_OPENED):
        gc.collect()


os.register_at_fork(before=_collect_before_fork)


@dataclass
class Store:
    """A repo location (local folder or URL) and how to read from it."""

    root: str
    storage_options: dict = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cache: ShardCache | None = None
    verify: bool = False

    def __post_init__(self):
        self.root = str(self.root).rstrip("/")
        self._fs = None
        self._fs_pid = None

    @property
    def remote(self) -> bool:
        return is_url(self.root) and not self.root.startswith("file://")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fs"] = state["_fs_pid"] = None  # each process opens its own connections
        return state

    # -- locations ------------------------------------------------------------------------------------

    def child(self, name: str) -> Store:
        return Store(f"{self.root}/{name}", self.storage_options, self.retry, self.cache, self.verify)

    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def local_path(self, rel: str) -> Path:
        root = self.root[len("file://"):] if self.root.startswith("file://") else self.root
        return Path(os.path.expanduser(root)) / rel

    @property
    def fs(self):
        if self._fs is None or self._fs_pid != os.getpid():
            import fsspec

            options = dict(self.storage_options)
            if self.root.startswith(("http://", "https://")):
                import aiohttp

                options.setdefault("client_kwargs", {}).setdefault(
                    "timeout", aiohttp.ClientTimeout(total=None, sock_connect=self.retry.timeout,
                                                     sock_read=self.retry.timeout))
            options.setdefault("skip_instance_cache", True)  # our own connections, not another Store's
            self._fs, _ = fsspec.core.url_to_fs(self.root, **options)
            self._fs_pid = os.getpid()
            try:
                _OPENED.add(self._fs)
            except TypeError:  # not weakly referenceable: nothing to keep
                pass
        return self._fs

    def _fs_path(self, rel: str) -> str:
        import fsspec.core

        url = self.url(rel)
        return url if self.root.startswith(("http://", "https://")) else fsspec.core.strip_protocol(url)

    # -- reading ------------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        """Whether the file is there. A location that cannot be reached raises
        :class:`UnreachableError` instead of answering no; access denied counts as absent (object
        stores answer 403 for a missing key to clients that may not list)."""
        if not self.remote:
            return self.local_path(rel).is_file()
        try:
            self.fetch(rel, 0, 1)
            return True
        except UnreachableError:
            raise
        except (FileNotFoundError, RemoteError):
            return False

    def read_bytes(self, rel: str) -> bytes:
        """A whole small file (manifest, card)."""
        if not self.remote:
            return self.local_path(rel).read_bytes()
        return self._with_retries(rel, lambda: self._cat(rel))

    def fetch(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file, retried; copes with servers that ignore ``Range``."""
        if not self.remote:
            with open(self.local_path(rel), "rb") as f:
                f.seek(start)
                return f.read(end - start)

        def attempt():
            data = self._cat(rel, start, end)
            if len(data) > end - start:  # the whole file came back: re-read, then skip to the offset
                data = data[start:end]
            return data

        return self._with_retries(rel, attempt)

    def _cat(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """One request; an async filesystem is also given an overall deadline, so nothing can hang."""
        kwargs = {"timeout": 2 * self.retry.timeout} if getattr(self.fs, "async_impl", False) else {}
        return self.fs.cat_file(self._fs_path(rel), start=start, end=end, **kwargs)

    def _with_retries(self, rel: str, attempt):
        url = redact(self.url(rel))
        for k in range(self.retry.tries):
            try:
                return attempt()
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"{url}: not found (404)") from None
            except PermissionError:
                raise RemoteError(f"{url}: access denied (401/403); check your token or credentials") from None
            except Exception as e:  # noqa: BLE001 - classified right below
                status = _status(e)
                if status in (401, 403):
                    raise RemoteError(f"{url}: access denied ({status}); check your token or credentials") from None
                if status == 404:
                    raise FileNotFoundError(errno.ENOENT, f"{url}: not found (404)") from None
                if not is_transient(e):
                    raise RemoteError(f"{url}: {type(e).__name__}: {redact(str(e))}") from None
                if k + 1 == self.retry.tries:
                    cause = f"HTTP {status}" if status else f"{type(e).__name__}: {redact(str(e))[:200]}"
                    raise UnreachableError(f"{url}: unreachable, still failing after {self.retry.tries} tries "
                                           f"({cause})") from None
                asked = asked_wait(e)  # a server that says how long to wait is waited out as it says
                time.sleep(self.retry.delay(k) if asked is None else asked)
        raise AssertionError("unreachable")

    def open(self, rel: str, size: int, sha256: str | None = None):
        """A readable, seekable file of a shard: local, from the cache, or streamed in ranges."""
        if not self.remote:
            return open(self.local_path(rel), "rb")
        if self.cache is not None and sha256:
            path = self.cache.get(self, rel, size, sha256)
            if path is not None:
                return open(path, "rb")
        return RangeFile(self, rel, size, sha256 if self.verify else None)


_READAHEAD: tuple[int, ThreadPoolExecutor] | None = None


def _readahead_pool() -> ThreadPoolExecutor:
    """This process's threads fetching the next chunk of files read sequentially."""
    global _READAHEAD
    if _READAHEAD is None or _READAHEAD[0] != os.getpid():
        _READAHEAD = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="bioscan5m-range"))
    return _READAHEAD[1]


class RangeFile(io.RawIOBase):
    """A remote file read in bounded ranges, checked against ``sha256`` when read from start to end in
    order. Read sequentially, the next chunk is already being fetched while this one is consumed, so
    the reader rarely waits for the network."""

    def __init__(self, store: Store, rel: str, size: int, sha256: str | None = None, chunk: int = CHUNK_BYTES):
        super().__init__()
        self.store, self.rel, self.size, self.expected, self.chunk = store, rel, size, sha256, chunk
        self.pos = 0
        self.buf_start, self.buf = 0, b""
        self.hash = hashlib.sha256() if sha256 else None
        self.hashed = 0  # bytes fed to the hash, in order from the start
        self.ahead: tuple[int, Future] | None = None  # (start, fetch) of the next chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        out = []
        while n > 0:
            offset = self.pos - self.buf_start
            if not 0 <= offset < len(self.buf):
                self._fill(self.pos)
                offset = 0
            piece = self.buf[offset: offset + n]
            out.append(piece)
            self.pos += len(piece)
            n -= len(piece)
        return b"".join(out)

    def _fetch(self, start: int) -> bytes:
        if self.ahead is not None and self.ahead[0] == start:
            data = self.ahead[1].result()  # a fault there is raised here, as by a fetch of our own
        else:
            data = self.store.fetch(self.rel, start, min(self.size, start + self.chunk))
        self.ahead = None
        following = start + self.chunk
        if following < self.size and (start == 0 or start == self.buf_start + len(self.buf)):  # sequential
            self.ahead = (following, _readahead_pool().submit(self.store.fetch, self.rel, following,
                                                               min(self.size, following + self.chunk)))
        return data

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead[1].cancel()
            self.ahead = None
        super().close()

    def _fill(self, start: int) -> None:
        end = min(self.size, start + self.chunk)
        data = self._fetch(start)
        if len(data) != end - start:
            raise ShardError(f"{redact(self.store.url(self.rel))}: got {len(data)} bytes for range {start}-{end - 1}; "
                             f"the file is shorter than its manifest says")
        self.buf_start, self.buf = start, data
        if self.hash is not None and start == self.hashed:
            self.hash.update(data)
            self.hashed = end
            if end == self.size and self.hash.hexdigest() != self.expected:
                raise ShardError(f"{redact(self.store.url(self.rel))}: sha256 {self.hash.hexdigest()} does not match "
                                 f"the manifest's {self.expected} (corrupted in storage or in transit)")


def copy_verified(store: Store, rel: str, size: int, sha256: str, path: str | os.PathLike) -> None:
    """Copy a remote file to ``path`` in bounded ranges, checked against ``sha256``; ``path`` appears
    only once the whole file is there and verified."""
    source = RangeFile(store, rel, size, sha256)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        while chunk := source.read(CHUNK_BYTES):
            f.write(chunk)


class ShardCache:
    """Verified shard files on local disk, shared by processes and jobs; least recently used evicted
    beyond ``limit`` bytes. Files are named by their sha256, written to a temporary name and renamed
    only when complete and verified, so a half-written file is never used."""

    def __init__(self, folder: str | os.PathLike, limit: int | None = None):
        self.folder = Path(folder)
        self.limit = limit
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.shard"

    def get(self, store: Store, rel: str, size: int, sha256: str) -> Path | None:
        """The cached file of a shard, downloading it first if needed (None: larger than the cache)."""
        path = self.path(sha256)
        if path.is_file():
            os.utime(path)  # recently used
            return path
        if self.limit is not None and size > self.limit:
            return None
        with open(self.folder / f".lock-{sha256}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per shard, whoever asks
            if not path.is_file():
                self._download(store, rel, size, sha256, path)
        (self.folder / f".lock-{sha256}").unlink(missing_ok=True)
        self.evict(keep=path)
        return path

    def _download(self, store: Store, rel: str, size: int, sha256: str, path: Path) -> None:
        copy_verified(store, rel, size, sha256, path)

    def files(self) -> list[Path]:
        return [p for p in self.folder.glob("*.shard") if p.is_file()]

    def size(self) -> int:
        """Bytes of the cached shards (one evicted meanwhile by another process or thread counts 0)."""
        total = 0
        for p in self.files():
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def evict(self, keep: Path | None = None) -> None:
        """Remove least recently used shards until the cache fits its limit (a reader that has one
        open keeps reading it: the file goes when it is closed)."""
        if self.limit is None:
            return
        entries = []
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.limit:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size
