"""Regenerate the embedded default in shards/ (the converted default sample).

Run after any change that alters the output (schema, sample generator, writers, card template):

    .venv/bin/python scripts/make_shards.py

tests/tools/test_embedded.py fails while shards/ differs from what this writes.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from bioscan5m_hf import schema
from bioscan5m_hf.tools.demo import EMBEDDED_DIR, make_embedded


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = make_embedded(Path(tmp) / "release", Path(tmp) / "out", workers=2)
        for name in (schema.PARQUET_REPO, schema.WDS_REPO):
            shutil.rmtree(EMBEDDED_DIR / name, ignore_errors=True)
            shutil.copytree(result.repos["parquet" if name == schema.PARQUET_REPO else "webdataset"],
                            EMBEDDED_DIR / name)
    print(f"wrote {EMBEDDED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
