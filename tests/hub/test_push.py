"""Pushing to the Hub: the real ``huggingface_hub`` client against the loopback Hub API
(:mod:`tests.servers.hubserver`), which stores what it is sent as the Hub does."""

import hashlib
import json

import pytest
from huggingface_hub import HfApi, constants

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main
from bioscan5m_hf.errors import UnreachableError
from bioscan5m_hf.hub import push as publish
from bioscan5m_hf.hub.push import plan_push, push

from ..servers.hubserver import HubServer


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests switch the Hub off; this one is local
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # uploads by the LFS protocol, not Xet
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    with HubServer(tmp_path / "hub") as server:
        yield server


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=hub.token)


@pytest.fixture
def out(out, monkeypatch):
    monkeypatch.setattr(publish, "COMMIT_FILES", 10)  # several commits per repo
    return out


def local_files(out, repo):
    folder = out / repo
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_fresh_push_creates_both_repos_and_uploads_every_file(out, hub, api):
    batches = {p.repo_id: len(p.batches()) for p in plan_push(out, "my-org", api=api)}
    lines = []
    push(out, "my-org", api=api, echo=lines.append)
    for repo, repo_id in ((schema.PARQUET_REPO, "my-org/BIOSCAN-5M-hf"), (schema.WDS_REPO, "my-org/BIOSCAN-5M-hf-wds")):
        assert hub.files(repo_id) == local_files(out, repo)
        assert not hub.repos[repo_id].private
        assert len(hub.repos[repo_id].messages) == batches[repo_id] > 2
        # The manifest and card went up last: no commit before lists a shard the repo lacks.
        last = [p for r, p in hub.committed if r == repo_id][-2:]
        assert sorted(last) == sorted([schema.MANIFEST, schema.CARD])
    card = (out / schema.PARQUET_REPO / schema.CARD).read_text()
    assert "my-org/BIOSCAN-5M-hf-wds" in card
    assert any("to upload" in line for line in lines)
    assert hub.calls["POST api/validate-yaml"] >= 2  # the Hub checked each card's metadata


def test_dry_run_sends_and_writes_nothing(out, hub, api, capsys):
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = push(out, "my-org", dry_run=True, api=api, echo=lambda line: None)
    assert hub.calls["POST api/datasets/commit"] == 0 and hub.repos == {}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert all(len(p.new) == len(p.files) for p in result.plans)
    assert main(["push", str(out), "--namespace", "my-org", "--dry-run"]) == 0  # no connection needed
    text = capsys.readouterr().out
    assert "my-org/BIOSCAN-5M-hf@main:" in text and "new, 0 changed, 0 unchanged" in text


def test_rerun_after_an_interruption_sends_only_what_is_missing(out, hub, api, monkeypatch):
    calls = {"n": 0}
    original = api.upload_folder

    def failing(**kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("connection reset by peer")
        return original(**kw)

    monkeypatch.setattr(api, "upload_folder", failing)
    with pytest.raises(UnreachableError, match=rf"{hub.url}: unreachable .*a rerun sends only what is missing"):
        push(out, "my-org", api=api, echo=lambda line: None)
    on_hub = set(hub.files("my-org/BIOSCAN-5M-hf"))
    plans = plan_push(out, "my-org", api=api)  # planned from what the Hub holds
    assert set(plans[0].to_send) == set(plans[0].files) - on_hub
    assert set(plans[1].to_send) == set(plans[1].files)  # the second repo had not started
    before, lfs = len(hub.committed), len(hub.lfs_uploads)
    monkeypatch.setattr(api, "upload_folder", original)
    push(out, "my-org", api=api, echo=lambda line: None)
    resent = hub.committed[before:]
    for plan in plans:
        assert sorted(p for r, p in resent if r == plan.repo_id) == sorted(plan.to_send)
    wanted = {plan.files[p][0] for plan in plans for p in plan.to_send}
    assert set(hub.lfs_uploads[lfs:]) <= wanted  # no byte of a file the Hub already had
    assert hub.files("my-org/BIOSCAN-5M-hf") == local_files(out, schema.PARQUET_REPO)


def test_update_sends_only_what_changed_and_branches(out, hub, api, monkeypatch):
    push(out, "my-org", api=api, echo=lambda line: None)
    commits = hub.calls["POST api/datasets/commit"]
    push(out, "my-org", api=api, echo=lambda line: None)
    assert hub.calls["POST api/datasets/commit"] == commits  # nothing changed, nothing sent
    (out / ".bioscan5m-push").rename(out / ".elsewhere")  # the local record is not what decides
    push(out, "my-org", api=api, echo=lambda line: None)
    assert hub.calls["POST api/datasets/commit"] == commits
    original = publish.card.render
    monkeypatch.setattr(publish.card, "render", lambda *a, **k: original(*a, **k) + "\nErratum: a new paragraph.\n")
    plans = plan_push(out, "my-org", api=api)
    assert all(p.changed == [schema.CARD] and p.new == [] for p in plans)
    regular = len(hub.regular_uploads)
    push(out, "my-org", api=api, echo=lambda line: None)
    assert hub.regular_uploads[regular:] == [schema.CARD, schema.CARD]
    push(out, "my-org", revision="v2", private=True, api=api, echo=lambda line: None)
    assert "v2" in hub.repos["my-org/BIOSCAN-5M-hf"].branches
    assert hub.files("my-org/BIOSCAN-5M-hf", "v2") == local_files(out, schema.PARQUET_REPO)


def test_the_hub_refuses_a_card_whose_metadata_is_invalid(out, hub, api, monkeypatch):
    original = publish.card.render
    monkeypatch.setattr(publish.card, "render", lambda *a, **k: original(*a, **k).replace(
        "num_examples: ", "num_examples: many", 1))
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        push(out, "my-org", api=api, echo=lambda line: None)
    assert schema.MANIFEST not in hub.files("my-org/BIOSCAN-5M-hf")  # shards may be there, never the listing


def test_a_wrong_token_is_refused_naming_no_secret(out, hub):
    with pytest.raises(Exception, match="401") as e:
        push(out, "my-org", api=HfApi(endpoint=hub.url, token="hf_wrongwrongwrong"), echo=lambda line: None)
    assert "hf_wrongwrongwrong" not in str(e.value)


def test_refuses_to_push_what_does_not_verify(out, hub, api, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    manifest = json.loads((out / schema.WDS_REPO / schema.MANIFEST).read_text())
    (out / schema.WDS_REPO / manifest["configs"]["cropped_256"]["val"]["shards"][0]["path"]).unlink()
    lines = []
    with pytest.raises(ValueError, match="(?s)refusing to push .*does not pass verify.*val-000000.tar: missing"):
        push(out, "my-org", api=api, echo=lines.append)
    assert sum(hub.calls.values()) == 0
    assert not any("hf_secret" in line for line in lines)


def test_an_unreachable_hub_says_so_naming_the_endpoint(out, hub):
    api = HfApi(endpoint="http://127.0.0.1:9", token="hf_secretsecretsecret")  # port 9: refused
    with pytest.raises(UnreachableError, match=r"http://127\.0\.0\.1:9: unreachable") as e:
        push(out, "my-org", api=api, echo=lambda line: None)
    assert "hf_secret" not in str(e.value)


def test_a_repo_we_did_not_make_is_refused_unless_forced(out, hub, api):
    """Someone else's repo under the target name (here one shaped like the official zip repository):
    refused before anything is sent, naming the repo and what it holds; --force pushes into it."""
    api.create_repo("my-org/BIOSCAN-5M-hf-wds", repo_type="dataset")
    for name in ("dataset.py", "README.md"):
        api.upload_file(path_or_fileobj=b"theirs\n", path_in_repo=name, repo_id="my-org/BIOSCAN-5M-hf-wds",
                        repo_type="dataset")
    before = dict(hub.files("my-org/BIOSCAN-5M-hf-wds"))
    with pytest.raises(publish.ForeignRepoError, match=r"refusing to push to my-org/BIOSCAN-5M-hf-wds: .*did not make "
                                                       r"it \(no manifest\.json\); it holds 2 file\(s\), among "
                                                       r"them dataset\.py\. .*--force"):
        push(out, "my-org", api=api, echo=lambda line: None)
    assert hub.files("my-org/BIOSCAN-5M-hf-wds") == before  # untouched
    assert "my-org/BIOSCAN-5M-hf" not in hub.repos  # nor the Parquet repo: the plan failed first
    push(out, "my-org", api=api, force=True, echo=lambda line: None)
    assert schema.MANIFEST in hub.files("my-org/BIOSCAN-5M-hf-wds") and "dataset.py" in hub.files(
        "my-org/BIOSCAN-5M-hf-wds")


def test_an_empty_repo_made_on_the_website_is_ours_to_fill(out, hub, api):
    api.create_repo("my-org/BIOSCAN-5M-hf", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"*.parquet filter=lfs\n", path_in_repo=".gitattributes",
                    repo_id="my-org/BIOSCAN-5M-hf", repo_type="dataset")
    push(out, "my-org", api=api, echo=lambda line: None)
    assert schema.MANIFEST in hub.files("my-org/BIOSCAN-5M-hf")


def test_the_default_names_are_not_the_official_repository():
    assert f"bioscan-ml/{schema.HUB_NAME}" != "bioscan-ml/BIOSCAN-5M"
    assert all(p.repo_id.split("/")[1] in (schema.HUB_NAME, schema.HUB_NAME + "-wds")
               for p in plan_push("shards", "bioscan-ml"))


def test_push_command_passes_force(out, monkeypatch):
    calls = []
    monkeypatch.setattr(publish, "push", lambda *a, **kw: calls.append(kw))
    assert main(["push", str(out), "--namespace", "my-org", "--force"]) in (0, None)
    assert calls and calls[0]["force"] is True
