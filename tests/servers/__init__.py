"""Loopback servers the tests (and the benchmarks) talk to instead of the network: a static file
server with fault injection (:mod:`.fileserver`), a Hub API (:mod:`.hubserver`) and an S3 API
(:mod:`.s3`, moto). None ships with the package."""
