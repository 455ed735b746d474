"""``bioscan5m-hf push``: publish both converted repos to the Hugging Face Hub.

The push is planned against what the Hub holds (its file listing: the sha256 of every LFS file, the
git blob id of the others), so a rerun after an interruption sends only what is missing, and an
update only what changed. Files go up in commits of bounded size (shards first, the manifest and
the card last, so a repo never lists a shard it lacks); each commit uploads its files in parallel
(``huggingface_hub``). A local record of what reached the Hub (``OUT/.bioscan5m-push/``, updated
after each commit) plans ``--dry-run`` without a connection. A repo that fails ``verify`` or
``verify --hub`` is never pushed, and a repo that exists without our ``manifest.json`` (one we did
not make) is never written to unless the user says ``--force``. Files go up by the Hub client's
default way (Xet where ``hf_xet`` is installed). The token comes from the usual ``huggingface_hub``
places and is never printed. Tested end to end against the loopback Hub API of
``tests/servers/hubserver.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import schema
from ..convert import card
from ..errors import RemoteError, UnreachableError
from ..repo.manifest import open_repos
from ..repo.storage import is_transient, redact
from ..repo.verify import format_report, verify
from ..util import file_digest, write_atomic

RECORD_DIR = ".bioscan5m-push"
#: Bounds of one commit: the Hub recommends fewer than 100 files per commit (HubLimits.files_per_commit).
COMMIT_FILES = 100
COMMIT_BYTES = 20 << 30
LAST = (schema.MANIFEST, schema.CARD)


@dataclass
class PushPlan:
    """What a push would do to one Hub repo."""

    repo_id: str
    folder: Path
    revision: str
    files: dict[str, tuple[str, int]]  # path -> (sha256, bytes), card included
    pushed: dict[str, str]  # path -> sha256 at the last push (the local record)
    card_text: str

    @property
    def new(self) -> list[str]:
        return sorted(p for p in self.files if p not in self.pushed)

    @property
    def changed(self) -> list[str]:
        return sorted(p for p in self.files if p in self.pushed and self.pushed[p] != self.files[p][0])

    @property
    def to_send(self) -> list[str]:
        """Files to upload, shards first, the manifest and the card last."""
        todo = set(self.new) | set(self.changed)
        return sorted(todo - set(LAST)) + [p for p in LAST if p in todo]

    def batches(self) -> list[list[str]]:
        out, batch, size = [], [], 0
        for path in self.to_send:
            nbytes = self.files[path][1]
            last_starts = path in LAST and batch[-1:] and batch[-1] not in LAST  # manifest + card: own commit
            if batch and (len(batch) >= COMMIT_FILES or size + nbytes > COMMIT_BYTES or last_starts):
                out.append(batch)
                batch, size = [], 0
            batch.append(path)
            size += nbytes
        return out + ([batch] if batch else [])

    def describe(self) -> str:
        total = sum(n for _, n in self.files.values())
        send = sum(self.files[p][1] for p in self.to_send)
        return (f"{self.repo_id}@{self.revision}: {len(self.files)} files, {total / 1e6:,.1f} MB; "
                f"{len(self.new)} new, {len(self.changed)} changed, "
                f"{len(self.files) - len(self.new) - len(self.changed)} unchanged; "
                f"to upload: {len(self.to_send)} files, {send / 1e6:,.1f} MB in {len(self.batches())} commit(s)")


def _record_path(out: Path, repo_id: str, revision: str) -> Path:
    return out / RECORD_DIR / f"{repo_id.replace('/', '--')}@{revision}.json"


def git_blob_id(data: bytes) -> str:
    """The id git (and the Hub's listing) gives a file that is not stored in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


#: What a repo made on the Hub's website holds before anything is pushed: such a repo is ours to fill.
EMPTY_REPO = frozenset({".gitattributes"})


def remote_state(api, repo_id: str, revision: str, folder: Path, files: dict[str, tuple[str, int]],
                 card_text: str, force: bool = False) -> dict[str, str]:
    """``path -> sha256`` of the files the Hub holds at ``revision`` that are the same as ours (an
    LFS file by its sha256, another by its git blob id); empty for a repo or branch not there yet.
    A repo that holds files but no ``manifest.json`` is someone else's: refused unless ``force``."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        listing = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
        remote = {f.path: f for f in listing if hasattr(f, "blob_id")}
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return {}
    same = {}
    for path, (sha256, _) in files.items():
        f = remote.get(path)
        if f is None:
            continue
        if f.lfs is not None:
            same[path] = f.lfs.sha256
        else:
            data = card_text.encode("utf-8") if path == schema.CARD else (folder / path).read_bytes()
            same[path] = sha256 if f.blob_id == git_blob_id(data) else f"git:{f.blob_id}"
    # Ours: it has our manifest, or (a push cut short before the manifest, which goes last) it holds
    # only files of ours, some of them already as we have them.
    theirs = set(remote) - EMPTY_REPO
    unknown = sorted(theirs - files.keys())
    ours = schema.MANIFEST in remote or not theirs or (
        not unknown and any(same[p] == files[p][0] for p in theirs if p != schema.CARD))
    if not ours and not force:
        shown = unknown or sorted(theirs)
        listed = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
        raise ForeignRepoError(f"refusing to push to {repo_id}: it exists on the Hub and bioscan5m-hf did not make "
                               f"it (no {schema.MANIFEST}); it holds {len(theirs)} file(s), among them {listed}. "
                               "Push under another --namespace or --name, or pass --force to add our files to it")
    return same


@contextmanager
def reaching(api):
    """Faults reaching the Hub (refused, DNS, TLS, timeouts, 5xx after ``huggingface_hub``'s retries)
    raise :class:`UnreachableError` naming the endpoint, never the token."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - classified right below
        if isinstance(e, RemoteError) or not is_transient(e):
            raise
        endpoint = redact(getattr(api, "endpoint", None) or "https://huggingface.co")
        raise UnreachableError(f"{endpoint}: unreachable ({type(e).__name__}: {redact(str(e))[:200]}); what "
                               f"was committed stays, and a rerun sends only what is missing") from None


class ForeignRepoError(ValueError):
    """The target repo exists and was not made by bioscan5m-hf."""


def plan_push(out: str | os.PathLike, namespace: str, name: str = schema.HUB_NAME,
              revision: str = "main", api=None, force: bool = False) -> list[PushPlan]:
    """The plan for both repos under ``out``, against what the Hub holds (``api``) or, without
    one, against the local record of the last push (nothing is sent or written). A target repo we
    did not make raises :class:`ForeignRepoError` unless ``force``."""
    out = Path(out)
    plans = []
    for fmt, repo in open_repos(out).items():
        if repo.store.remote:
            raise ValueError("push needs the local output of convert")
        repo_id = f"{namespace}/{name if fmt == 'parquet' else name + '-wds'}"
        folder = repo.store.local_path("")
        text = card.render(repo.manifest, namespace=namespace, name=name)
        files: dict[str, tuple[str, int]] = {}
        for s in (s for c in repo.configs.values() for v in c.values() for s in v["shards"]):
            files[s["path"]] = (s["sha256"], s["num_bytes"])
        for path, info in repo.manifest.get("files", {}).items():
            files[path] = (info["sha256"], info["num_bytes"])
        files[schema.MANIFEST] = (file_digest(folder / schema.MANIFEST), (folder / schema.MANIFEST).stat().st_size)
        data = text.encode("utf-8")
        files[schema.CARD] = (hashlib.sha256(data).hexdigest(), len(data))
        if api is not None:
            with reaching(api):
                pushed = remote_state(api, repo_id, revision, folder, files, text, force)
        else:
            record = _record_path(out, repo_id, revision)
            pushed = json.loads(record.read_text()) if record.is_file() else {}
        plans.append(PushPlan(repo_id, folder, revision, files, pushed, text))
    return plans


@dataclass
class PushResult:
    plans: list[PushPlan]
    commits: list[str] = field(default_factory=list)


def push(out: str | os.PathLike, namespace: str, name: str = schema.HUB_NAME, *, private: bool = False,
         revision: str = "main", dry_run: bool = False, force: bool = False, api=None, echo=print) -> PushResult:
    """Create or update ``namespace/name`` (Parquet) and ``namespace/name-wds`` (WebDataset).

    ``api`` is a :class:`huggingface_hub.HfApi` (the default one when None; tests pass a recording
    fake). With ``dry_run`` the plan is printed and nothing is sent or written. An existing repo
    without our ``manifest.json`` is refused (:class:`ForeignRepoError`, before anything is sent)
    unless ``force``.
    """
    out = Path(out)
    from .rules import verify_hub

    report = verify(out)
    hub = verify_hub(out, namespace=namespace, name=name)
    if not report.ok or not hub.ok:
        problems = "\n".join(filter(None, [format_report(report) if not report.ok else "",
                                           format_report(hub) if not hub.ok else ""]))
        raise ValueError(f"refusing to push {out}: it does not pass verify\n{problems}")
    if api is None and not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
    plans = plan_push(out, namespace, name, revision, api=api, force=force)
    for plan in plans:
        echo(plan.describe())
    result = PushResult(plans)
    if dry_run:
        return result
    for plan in plans:
        with reaching(api):
            _push_repo(api, out, plan, private, revision, result, echo)
    return result


def _push_repo(api, out: Path, plan: PushPlan, private: bool, revision: str, result: PushResult, echo) -> None:
    """Create ``plan``'s repo (and branch) and commit its files batch by batch, recording each commit."""
    api.create_repo(plan.repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(plan.repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    (plan.folder / schema.CARD).write_text(plan.card_text, encoding="utf-8")
    record_path = _record_path(out, plan.repo_id, revision)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    pushed = dict(plan.pushed)
    batches = plan.batches()
    for k, batch in enumerate(batches):
        message = f"bioscan5m-hf: upload {len(batch)} file(s) ({k + 1}/{len(batches)})"
        api.upload_folder(repo_id=plan.repo_id, folder_path=str(plan.folder), repo_type="dataset",
                          revision=revision, allow_patterns=batch, commit_message=message)
        for path in batch:
            pushed[path] = plan.files[path][0]
        write_atomic(record_path, json.dumps(pushed, indent=1, sort_keys=True))
        result.commits.append(f"{plan.repo_id}: {message}")
        echo(f"  {plan.repo_id}: committed {len(batch)} file(s) ({k + 1}/{len(batches)})")
