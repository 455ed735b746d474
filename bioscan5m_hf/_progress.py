"""Progress bars for long work (tqdm), quiet when asked or when stderr is not a terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(*, total: int | None, desc: str, unit: str = "it", disable: bool = False) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)
