"""The package's exceptions, in one place. Each message names the file, row, shard or URL at fault.

The CLI catches all of them (and ``ValueError`` / ``FileNotFoundError`` for bad arguments and
missing inputs) and prints a one-line ``bioscan5m-hf: error: ...`` with a non-zero exit.
"""

from __future__ import annotations


class ReleaseError(ValueError):
    """The release being converted (CSV or images) is malformed; the message names file, row and column."""


class ShardError(RuntimeError):
    """A shard is unreadable or does not hold what its manifest says; the message names it."""


class RemoteError(OSError):
    """A permanent fault reading a URL (or transient ones past the retry limit); the message names the URL."""


class UnreachableError(RemoteError):
    """A URL that could not be reached at all (connection refused, DNS or TLS failure, timeouts after
    the retries): not the same as a location that answers without a converted repo."""
