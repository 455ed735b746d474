"""Pushing to the Hub, against a recording fake of huggingface_hub's API (the Hub is not reachable here)."""

import hashlib
import json
from pathlib import Path

import pytest

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main
from bioscan5m_hf.hub import push as publish
from bioscan5m_hf.hub.push import plan_push, push


class FakeApi:
    """Records every call; keeps what was uploaded per repo; can fail on the n-th upload."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.uploads, self.remote = [], fail_at, 0, {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw["repo_type"], kw["private"], kw["exist_ok"]))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw["branch"]))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, revision, repo_type, commit_message):
        self.uploads += 1
        if self.uploads == self.fail_at:
            raise ConnectionError("connection reset by peer")
        assert repo_type == "dataset"
        self.calls.append(("upload_folder", repo_id, revision, tuple(allow_patterns)))
        for path in allow_patterns:
            data = (Path(folder_path) / path).read_bytes()
            self.remote.setdefault((repo_id, revision), {})[path] = hashlib.sha256(data).hexdigest()


@pytest.fixture
def out(out, monkeypatch):
    monkeypatch.setattr(publish, "COMMIT_FILES", 10)  # several commits per repo
    return out


def local_files(out, repo):
    folder = out / repo
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_fresh_push_creates_both_repos_and_uploads_every_file(out):
    api = FakeApi()
    lines = []
    push(out, "my-org", api=api, echo=lines.append)
    assert ("create_repo", "my-org/BIOSCAN-5M", "dataset", False, True) in api.calls
    assert ("create_repo", "my-org/BIOSCAN-5M-wds", "dataset", False, True) in api.calls
    for repo, repo_id in ((schema.PARQUET_REPO, "my-org/BIOSCAN-5M"), (schema.WDS_REPO, "my-org/BIOSCAN-5M-wds")):
        assert api.remote[repo_id, "main"] == local_files(out, repo)
        uploads = [c[3] for c in api.calls if c[0] == "upload_folder" and c[1] == repo_id]
        assert all(len(batch) <= 10 for batch in uploads)
        assert uploads[-1] == (schema.MANIFEST, schema.CARD)  # listed only once every shard is there
    card = (out / schema.PARQUET_REPO / schema.CARD).read_text()
    assert "my-org/BIOSCAN-5M-wds" in card
    assert any("to upload" in line for line in lines)


def test_dry_run_sends_and_writes_nothing(out, capsys):
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    api = FakeApi()
    result = push(out, "my-org", dry_run=True, api=api, echo=lambda line: None)
    assert api.calls == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert all(len(p.new) == len(p.files) for p in result.plans)
    assert main(["push", str(out), "--namespace", "my-org", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "my-org/BIOSCAN-5M@main:" in text and "new, 0 changed, 0 unchanged" in text


def test_rerun_after_an_interruption_sends_only_what_is_missing(out):
    failing = FakeApi(fail_at=3)
    with pytest.raises(ConnectionError):
        push(out, "my-org", api=failing, echo=lambda line: None)
    sent = {p for c in failing.calls if c[0] == "upload_folder" for p in c[3]}
    plan = {p.repo_id: p for p in plan_push(out, "my-org")}
    parquet = plan["my-org/BIOSCAN-5M"]
    assert set(parquet.to_send) == set(parquet.files) - sent  # the plan knows what reached the Hub
    api = FakeApi()
    push(out, "my-org", api=api, echo=lambda line: None)
    resent = {p for c in api.calls if c[0] == "upload_folder" and c[1] == "my-org/BIOSCAN-5M" for p in c[3]}
    assert not resent & sent
    merged = {**failing.remote["my-org/BIOSCAN-5M", "main"], **api.remote["my-org/BIOSCAN-5M", "main"]}
    assert merged == local_files(out, schema.PARQUET_REPO)


def test_update_sends_only_what_changed_and_branches(out, monkeypatch):
    push(out, "my-org", api=FakeApi(), echo=lambda line: None)
    again = FakeApi()
    push(out, "my-org", api=again, echo=lambda line: None)
    assert [c for c in again.calls if c[0] == "upload_folder"] == []  # nothing changed
    original = publish.card.render
    monkeypatch.setattr(publish.card, "render", lambda *a, **k: original(*a, **k) + "\nErratum: a new paragraph.\n")
    plans = plan_push(out, "my-org")
    assert all(p.changed == [schema.CARD] and p.new == [] for p in plans)
    update = FakeApi()
    push(out, "my-org", api=update, echo=lambda line: None)
    assert [c[3] for c in update.calls if c[0] == "upload_folder"] == [(schema.CARD,), (schema.CARD,)]
    branch = FakeApi()
    push(out, "my-org", revision="v2", private=True, api=branch, echo=lambda line: None)
    assert ("create_branch", "my-org/BIOSCAN-5M", "v2") in branch.calls
    assert ("create_repo", "my-org/BIOSCAN-5M", "dataset", True, True) in branch.calls
    assert branch.remote["my-org/BIOSCAN-5M", "v2"] == local_files(out, schema.PARQUET_REPO)


def test_refuses_to_push_what_does_not_verify(out, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    (out / schema.WDS_REPO / manifest["configs"]["cropped_256"]["val"]["shards"][0]["path"]).unlink()
    api = FakeApi()
    lines = []
    with pytest.raises(ValueError, match="(?s)refusing to push .*does not pass verify.*val-000000.tar: missing"):
        push(out, "my-org", api=api, echo=lines.append)
    assert api.calls == []
    assert not any("hf_secret" in line for line in lines)
