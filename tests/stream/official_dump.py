"""Run the official bioscan-dataset loader over a release and print its outputs as JSON.

Runs in .venv-official (scripts/install_official.sh):
    python tests/stream/official_dump.py RELEASE_ROOT [METADATA_DIR]
With METADATA_DIR, the ``metadata`` DataFrames of the METADATA_CASES go there as Parquet files.
The official class checks the real release's md5 sums; a synthetic release has others, so that check
is switched off here. Everything else is the official code as published.
"""

import json
import sys

from bioscan_dataset import BIOSCAN5M
from conformance_cases import METADATA_CASES, cases, encode, key_of

BIOSCAN5M._check_integrity = lambda self, verbose=1: True


def main(root, metadata_dir=None):
    out = {}
    for name, kwargs in cases().items():
        ds = BIOSCAN5M(root, **kwargs)
        rows, order = {}, []
        for i in range(len(ds)):
            sample = ds[i]
            key = key_of(sample, kwargs, i)
            rows[key] = encode(sample)
            order.append(key)
        out[name] = {"len": len(ds), "rows": rows, "order": order}
        if metadata_dir and name in METADATA_CASES:
            ds.metadata.to_parquet(f"{metadata_dir}/{name}.parquet")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:3])
