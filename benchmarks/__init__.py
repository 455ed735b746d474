"""The benchmark suite and the peer loaders it compares make_loader with: development tools that
live beside the package, not in it. Run from a clone: ``python -m benchmarks WORKDIR --only loader``
(``make bench``); BENCHMARKS.md holds the latest run of each area with its command."""
