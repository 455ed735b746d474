"""A converted repo, local or at a URL: ``storage`` (bounded reads, retries, cache), ``manifest``
(the repo and its shards), ``readers`` (records from Parquet and tar shards) and ``verify``."""
