"""The resume journal of a conversion: the work folder ``OUT/.bioscan5m-work``.

While a conversion runs, the work folder holds its options and source (``state.json``), its task
plan (``plan.json``), the validated metadata table (``metadata.arrow``) and, per finished shard, a
record written only after the shard was renamed into place whole (``done/<format>/<shard>.json``).
A rerun of the same conversion keeps the shards whose records and sizes match and writes the rest;
``finalize`` reads the records back, and the folder is removed once the manifests are written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import schema
from ..errors import ReleaseError
from ..util import TEMPORARY_GLOB, write_atomic

WORK_DIR = ".bioscan5m-work"
STATE = "state.json"
TASKS = "plan.json"
METADATA = "metadata.arrow"


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Journal:
    """The work folder of the conversion into ``out`` (small and picklable: workers get a copy)."""

    out: Path

    @property
    def folder(self) -> Path:
        return Path(self.out) / WORK_DIR

    @property
    def metadata(self) -> Path:
        return self.folder / METADATA

    def state(self) -> dict | None:
        return read_json(self.folder / STATE)

    def in_progress(self) -> bool:
        return (self.folder / STATE).exists()

    def prepare(self, repos: dict[str, Path], state: dict, overwrite: bool, shared: bool = False) -> None:
        """Refuse to mix options into an existing output (unless ``overwrite``), drop what an interrupted
        run left unfinished, and record this run's options. ``shared``: other parts of a ``--num-tasks``
        conversion may be running in the folder right now, so nothing there is removed."""
        work = self.folder
        if overwrite:
            for path in (*repos.values(), work):
                shutil.rmtree(path, ignore_errors=True)
        for repo in repos.values():
            manifest = read_json(repo / schema.MANIFEST)
            if manifest is not None and manifest.get("options") != state["options"]:
                raise ReleaseError(f"{repo} holds a conversion made with other options ({manifest.get('options')}); "
                                   "pass --overwrite to replace it")
        previous = self.state()
        if previous is not None and previous["options"] != state["options"]:
            raise ReleaseError(f"{work} holds an unfinished conversion made with other options "
                               f"({previous['options']}); rerun it with those options, or pass --overwrite")
        if previous is not None and previous != state and shared:
            raise ReleaseError(f"{work} holds an unfinished conversion of another release; pass --overwrite")
        if not shared:
            if previous != state:  # no record of an earlier run of this conversion (or of another release)
                shutil.rmtree(work, ignore_errors=True)
            for folder in (*repos.values(), work):  # temporary files of a run killed mid-write
                remove_temporary(folder)
        write_json(work / STATE, state)

    # -- shards ---------------------------------------------------------------------------------------

    def done_record(self, fmt: str, config: str, split: str, index: int) -> Path:
        """Where the record of a finished shard goes."""
        return self.folder / "done" / fmt / (schema.shard_relpath(fmt, config, split, index) + ".json")

    def record_done(self, path: Path, entry: dict) -> None:
        write_json(path, entry)

    @staticmethod
    def finished(records: dict[str, Path], repos: dict[str, str | Path]) -> list[dict] | None:
        """The manifest entries recorded at ``records`` (per format), if every one is there and its
        shard still stands whole under its final name; else None."""
        entries = []
        for fmt, done in records.items():
            entry = read_json(done)
            try:
                size = (Path(repos[fmt]) / entry["path"]).stat().st_size
            except (OSError, TypeError, KeyError):
                return None
            if size != entry["num_bytes"] or "arrow_bytes" not in entry:  # (older converters did not record it)
                return None
            entries.append(entry)
        return entries

    def record_tasks(self, tasks: list[list[Path]], skipped: dict) -> None:
        """The task plan: per task, the records its shards will leave (and the records skipped)."""
        done = self.folder / "done"
        write_json(self.folder / TASKS, {"tasks": [[str(p.relative_to(done)) for p in t] for t in tasks],
                                         "skipped": skipped})

    def collect(self, repos: dict[str, Path]) -> tuple[list[dict], dict]:
        """Every planned shard's manifest entry, and the skipped records, for :func:`finalize`;
        an error naming the missing shards if any part is not written yet."""
        state, tasks = self.state(), read_json(self.folder / TASKS)
        if state is None or tasks is None or not self.metadata.is_file():
            raise ReleaseError(f"{self.out}: no conversion in progress to finalize ({self.folder} is missing or "
                               "incomplete)")
        entries, missing = [], []
        for records in tasks["tasks"]:
            for rel in records:
                fmt = rel.split("/", 1)[0]
                found = self.finished({fmt: self.folder / "done" / rel}, repos)
                if found is None:
                    missing.append(rel[len(fmt) + 1: -len(".json")])
                else:
                    entries += found
        if missing:
            raise ReleaseError(f"{self.out}: {len(missing)} planned shard(s) are not written yet, e.g. "
                               f"{', '.join(missing[:3])}; run the missing tasks (or convert again), then finalize")
        return entries, tasks["skipped"]

    def close(self) -> None:
        """The conversion is complete: remove the folder (state first, so a cleanup cut short is never
        mistaken for a run to resume)."""
        (self.folder / STATE).unlink()
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_temporary(folder: Path) -> None:
    """Delete the temporary files of writes killed half way (never under a final name)."""
    for tmp in folder.rglob(TEMPORARY_GLOB) if folder.is_dir() else ():
        tmp.unlink(missing_ok=True)
