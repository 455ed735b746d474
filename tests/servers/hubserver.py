"""A Hugging Face Hub on 127.0.0.1: the API calls that the real ``huggingface_hub`` and ``datasets``
clients make to publish and read dataset repos, answered from a local folder, for tests and
benchmarks that cannot reach huggingface.co. Point a client at it with ``HF_ENDPOINT=<url>`` (and
``HF_HUB_DISABLE_XET=1``: uploads then use the Hub's LFS protocol; Xet storage is not emulated).

Answered, as the Hub does (``huggingface_hub`` 2.x; ``X-Error-Code`` on 404s as its error mapping expects):

- ``POST /api/repos/create``, ``POST /api/datasets/{id}/branch/{branch}``: new repos (409 if there);
- ``GET /api/datasets/{id}[/revision/{rev}]``: repo info with the revision's commit ``sha`` and files;
- ``GET /api/datasets/{id}/tree/{rev}[/{path}]`` (``recursive``, paged with ``Link``) and
  ``POST .../paths-info/{rev}``: listings, files with their git blob id and LFS sha256;
- ``GET|HEAD /datasets/{id}/resolve/{rev}/{path}``: file bytes, ``Range`` honoured, with
  ``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag``/``X-Linked-Size``;
- ``POST .../preupload/{rev}``: regular or LFS upload mode (LFS for binary or > 10 MB), and the
  remote oid so unchanged files are skipped; ``POST /datasets/{id}.git/info/lfs/objects/batch``
  (basic transfer: ``PUT`` then verify, nothing to send for objects already stored);
- ``POST .../commit/{rev}`` (ndjson: header, file, lfsFile, deletedFile, deletedFolder), with the
  ``parentCommit`` check; ``POST /api/validate-yaml``: the card's metadata, as the Hub refuses it.

Writes need ``Authorization: Bearer <token>``; every request is counted (``traffic``) and resolve
requests can be given faults by ``"<repo id>/<path>"`` (see :class:`~.fileserver.Traffic`).
``hold_commit(n)`` makes the n-th commit wait until released, so a test can kill a pushing client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from .fileserver import LoopbackServer, QuietHandler, Traffic, send_file, send_status

#: Files the Hub stores as LFS whatever their content (and anything binary or larger than this).
LFS_BYTES = 10 << 20
PAGE = 50  # tree entries per page


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A file in a commit: its size, sha256 (where its bytes are stored) and git blob id."""

    size: int
    sha256: str
    blob_id: str
    lfs: bool


@dataclass
class HubRepo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # sha -> path -> entry
    messages: list[str] = field(default_factory=list)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def validate_card(content: str) -> list[str]:
    """Errors the Hub reports for a dataset card's metadata (the YAML between the ``---`` lines)."""
    if not content.startswith("---"):
        return []
    try:
        header = content.split("---", 2)[1]
        data = yaml.safe_load(header) or {}
    except (IndexError, yaml.YAMLError) as e:
        return [f"YAML does not parse: {e}"]
    errors = []
    if not isinstance(data, dict):
        return ["metadata is not a mapping"]
    configs = data.get("configs", [])
    names = set()
    for k, config in enumerate(configs if isinstance(configs, list) else [configs]):
        if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
            errors.append(f'"configs[{k}].config_name" is required')
            continue
        if config["config_name"] in names:
            errors.append(f'"configs[{k}].config_name" {config["config_name"]!r} is duplicated')
        names.add(config["config_name"])
        files = config.get("data_files", [])
        for j, item in enumerate(files if isinstance(files, list) else []):
            if isinstance(item, dict) and not ({"split", "path"} <= set(item)):
                errors.append(f'"configs[{k}].data_files[{j}]" needs split and path')
    for info in data.get("dataset_info", []) if isinstance(data.get("dataset_info"), list) else []:
        for split in info.get("splits", []):
            if not isinstance(split.get("num_examples"), int) or not isinstance(split.get("num_bytes"), int):
                errors.append(f'"dataset_info.splits" of {info.get("config_name")!r}: num_bytes and num_examples '
                              f"must be integers")
    for key in ("license", "task_categories", "tags", "size_categories", "language"):
        value = data.get(key)
        if value is not None and not isinstance(value, (str, list)):
            errors.append(f'"{key}" must be a string or a list')
    return errors


class HubServer:
    """The Hub API at ``url``, storing repos under ``folder``; ``token`` is the one token it accepts."""

    def __init__(self, folder: str | Path, token: str = "hf_loopback_token"):
        self.folder = Path(folder)
        (self.folder / "objects").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, HubRepo] = {}
        self.traffic = Traffic()  # file reads (resolve), by "<repo id>/<path>"
        self.calls: Counter[str] = Counter()  # every request, by method and endpoint
        self.lfs_uploads: list[str] = []  # sha256 of every LFS object received, in order
        self.regular_uploads: list[str] = []  # paths of every file sent inside a commit
        self.committed: list[tuple[str, str]] = []  # (repo id, path) of every file added by a commit
        self.commit_calls = 0
        self.lock = threading.RLock()
        self._hold: tuple[int, threading.Event, threading.Event] | None = None
        hub = self

        class Handler(QuietHandler):
            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

        self.httpd = LoopbackServer(Handler)
        self.url = self.httpd.url

    def __enter__(self) -> HubServer:
        self.httpd.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._hold is not None:
            self._hold[2].set()
        self.httpd.stop()

    # -- test controls ------------------------------------------------------------------------------

    def hold_commit(self, n: int) -> threading.Event:
        """Make the ``n``-th commit request (counting from now) wait, uncommitted, until
        :meth:`release`; returns an event set when it has arrived."""
        arrived = threading.Event()
        self._hold = (self.commit_calls + n, arrived, threading.Event())
        return arrived

    def release(self) -> None:
        if self._hold is not None:
            self._hold[2].set()
            self._hold = None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, str]:
        """``path -> sha256`` of a revision."""
        repo = self.repos[repo_id]
        return {p: e.sha256 for p, e in repo.commits[repo.resolve(revision)].items()}

    # -- plumbing ------------------------------------------------------------------------------------

    def _dispatch(self, handler, method: str) -> None:
        url = urlsplit(handler.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        try:
            self._route(handler, method, parts, query, body)
        except HubError as e:
            headers = {"X-Error-Code": e.code} if e.code else {}
            self._json(handler, {"error": str(e)}, e.status, headers)

    def _json(self, handler, data, status: int = 200, headers: dict | None = None) -> None:
        raw = json.dumps(data).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(raw)

    def _authorized(self, handler) -> None:
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, handler, repo_id: str) -> HubRepo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and handler.headers.get("Authorization") != f"Bearer {self.token}"):
            raise HubError(404, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
        return repo

    def _snapshot(self, handler, repo_id: str, revision: str) -> tuple[HubRepo, str, dict[str, Entry]]:
        repo = self._repo(handler, repo_id)
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, sha, repo.commits[sha]

    def _route(self, handler, method, parts, query, body) -> None:
        with self.lock:
            endpoint = parts[:2] + parts[4:5] if parts[:1] == ["api"] else parts[:1] + parts[3:4]
            self.calls[f"{method} {'/'.join(endpoint)}"] += 1
        if parts[:1] == ["api"]:
            if parts[1:3] == ["repos", "create"] and method == "POST":
                return self._create_repo(handler, json.loads(body))
            if parts[1:2] == ["validate-yaml"] and method == "POST":
                errors = validate_card(json.loads(body).get("content", ""))
                return self._json(handler, {"errors": [{"message": m} for m in errors], "warnings": []},
                                  400 if errors else 200)
            if parts[1:2] == ["datasets"] and len(parts) >= 4:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", (parts[4:5] or [""])[0], parts[5:]
                return self._api(handler, method, repo_id, action, rest, query, body)
        elif parts[:1] == ["datasets"] and len(parts) >= 4:
            repo_id = f"{parts[1]}/{parts[2].removesuffix('.git')}"
            if parts[3:] == ["info", "lfs", "objects", "batch"] and method == "POST":
                return self._lfs_batch(handler, repo_id, json.loads(body))
            if parts[3] == "resolve" and len(parts) >= 6 and method in ("GET", "HEAD"):
                return self._resolve(handler, repo_id, parts[4], "/".join(parts[5:]), method == "HEAD")
        elif parts[:1] == ["__lfs__"] and len(parts) >= 2:
            return self._lfs_object(handler, method, parts[1], parts[2:], body)
        raise HubError(404, f"no such endpoint: {method} {handler.path}")

    # -- repos ----------------------------------------------------------------------------------------

    def _create_repo(self, handler, payload: dict) -> None:
        self._authorized(handler)
        if payload.get("type") != "dataset":
            raise HubError(400, "this loopback Hub holds dataset repos only")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.url}/datasets/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                return self._json(handler, {"error": "You already created this dataset repo", "url": url}, 409)
            repo = HubRepo(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
            root = self._commit_sha(repo_id, None, {}, "initial commit")
            repo.commits[root] = {}
            repo.branches["main"] = root
            self.repos[repo_id] = repo
        self._json(handler, {"url": url, "name": repo_id})

    def _api(self, handler, method, repo_id, action, rest, query, body) -> None:
        if action == "" and method == "GET":
            return self._info(handler, repo_id, "main")
        if action == "revision" and method == "GET":
            return self._info(handler, repo_id, "/".join(rest))
        if action == "tree" and method == "GET":
            return self._tree(handler, repo_id, rest[0], "/".join(rest[1:]), query)
        if action == "paths-info" and method == "POST":
            form = parse_qs(body.decode())
            return self._paths_info(handler, repo_id, rest[0], form.get("paths", []))
        if action == "preupload" and method == "POST":
            return self._preupload(handler, repo_id, rest[0], json.loads(body))
        if action == "commit" and method == "POST":
            return self._commit(handler, repo_id, rest[0], body)
        if action == "branch" and method == "POST":
            return self._branch(handler, repo_id, "/".join(rest), json.loads(body or b"{}"))
        raise HubError(404, f"no such endpoint: {method} {handler.path}")

    def _branch(self, handler, repo_id: str, branch: str, payload: dict) -> None:
        self._authorized(handler)
        repo, sha, _ = self._snapshot(handler, repo_id, payload.get("startingPoint") or "main")
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = sha
        self._json(handler, {})

    def _info(self, handler, repo_id: str, revision: str) -> None:
        repo, sha, files = self._snapshot(handler, repo_id, revision)
        siblings = [{"rfilename": p, "size": e.size, "blobId": e.blob_id} for p, e in sorted(files.items())]
        self._json(handler, {"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                             "private": repo.private, "gated": False, "disabled": False, "downloads": 0,
                             "likes": 0, "tags": [], "siblings": siblings,
                             "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

    @staticmethod
    def _file_json(path: str, e: Entry) -> dict:
        item = {"type": "file", "oid": e.blob_id, "size": e.size, "path": path}
        if e.lfs:
            item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
        return item

    @staticmethod
    def _folders(files: dict[str, Entry]) -> set[str]:
        return {"/".join(p.split("/")[:k]) for p in files for k in range(1, p.count("/") + 1)}

    def _tree(self, handler, repo_id: str, revision: str, path: str, query: dict) -> None:
        _, _, files = self._snapshot(handler, repo_id, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = f"{path}/" if path else ""
        folders = self._folders(files)
        if path and path not in folders:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        items = []
        for d in sorted(folders):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                items.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d})
        for p, e in sorted(files.items()):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                items.append(self._file_json(p, e))
        start = int(query.get("cursor", ["0"])[0])
        page = items[start:start + PAGE]
        headers = {}
        if start + PAGE < len(items):
            base = f"{self.url}/api/datasets/{repo_id}/tree/{quote(revision, safe='')}/{quote(path)}"
            headers["Link"] = f'<{base}?recursive={str(recursive).lower()}&cursor={start + PAGE}>; rel="next"'
        self._json(handler, page, headers=headers)

    def _paths_info(self, handler, repo_id: str, revision: str, paths: list[str]) -> None:
        _, _, files = self._snapshot(handler, repo_id, revision)
        folders = self._folders(files)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append(self._file_json(p, files[p]))
            elif p in folders:
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "path": p})
        self._json(handler, out)

    def _resolve(self, handler, repo_id: str, revision: str, path: str, head: bool) -> None:
        try:
            _, sha, files = self._snapshot(handler, repo_id, revision)
        except HubError as e:
            send_status(handler, e.status, {"X-Error-Code": e.code} if e.code else {})
            return
        entry = files.get(path)
        if entry is None:
            self.traffic.arrived(f"{repo_id}/{path}")
            send_status(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            return
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.blob_id}"'}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        send_file(handler, self.traffic, f"{repo_id}/{path}", self._object(entry.sha256), head, headers)

    # -- uploads --------------------------------------------------------------------------------------

    def _object(self, sha256: str) -> Path:
        return self.folder / "objects" / sha256

    def _preupload(self, handler, repo_id: str, revision: str, payload: dict) -> None:
        self._authorized(handler)
        _, _, files = self._snapshot(handler, repo_id, revision)
        out = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            binary = b"\0" in sample or f["size"] > LFS_BYTES or f["path"].endswith((".parquet", ".tar", ".idx"))
            remote = files.get(f["path"])
            oid = None if remote is None else (remote.sha256 if remote.lfs else remote.blob_id)
            out.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False,
                        "oid": oid})
        self._json(handler, {"files": out, "commitOid": None})

    def _lfs_batch(self, handler, repo_id: str, payload: dict) -> None:
        self._authorized(handler)
        self._repo(handler, repo_id)
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if not self._object(obj["oid"]).is_file():
                href = f"{self.url}/__lfs__/{obj['oid']}"
                item["actions"] = {"upload": {"href": href, "header": {}},
                                   "verify": {"href": f"{href}/verify", "header": {}}}
            objects.append(item)
        self._json(handler, {"transfer": "basic", "objects": objects})

    def _lfs_object(self, handler, method: str, oid: str, rest: list[str], body: bytes) -> None:
        if method == "PUT" and not rest:
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"the bytes sent do not have sha256 {oid}")
            self._store(body, oid)
            with self.lock:
                self.lfs_uploads.append(oid)
            return self._json(handler, {})
        if method == "POST" and rest == ["verify"]:
            payload = json.loads(body)
            if not self._object(oid).is_file() or self._object(oid).stat().st_size != payload.get("size"):
                raise HubError(404, f"LFS object {oid} was not uploaded")
            return self._json(handler, {})
        raise HubError(404, f"no such endpoint: {method} {handler.path}")

    def _store(self, data: bytes, sha256: str) -> None:
        path = self._object(sha256)
        if not path.is_file():
            tmp = path.with_name(f".{sha256}.{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(path)

    def _commit_sha(self, repo_id: str, parent: str | None, files: dict[str, Entry], message: str) -> str:
        state = json.dumps([repo_id, parent, sorted((p, e.sha256) for p, e in files.items()), message, time.time()])
        return hashlib.sha1(state.encode()).hexdigest()

    def _commit(self, handler, repo_id: str, revision: str, body: bytes) -> None:
        self._authorized(handler)
        with self.lock:
            self.commit_calls += 1
            hold = self._hold
        if hold is not None and self.commit_calls == hold[0]:
            hold[1].set()
            hold[2].wait(60)  # the client is killed meanwhile; this commit never lands
            raise HubError(500, "commit interrupted")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        with self.lock:
            repo, sha, files = self._snapshot(handler, repo_id, revision)
            if header.get("parentCommit") and header["parentCommit"] != sha:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    sha256 = hashlib.sha256(data).hexdigest()
                    self._store(data, sha256)
                    self.regular_uploads.append(value["path"])
                    files[value["path"]] = Entry(len(data), sha256, git_blob_id(data), False)
                elif key == "lfsFile":
                    path = self._object(value["oid"])
                    if not path.is_file():
                        raise HubError(400, f"LFS file {value['path']} ({value['oid']}) was not uploaded")
                    blob = git_blob_id(f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\n"
                                       f"size {value['size']}\n".encode())
                    files[value["path"]] = Entry(value["size"], value["oid"], blob, True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    files = {p: e for p, e in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            self.committed += [(repo_id, x["value"]["path"]) for x in lines if x["key"] in ("file", "lfsFile")]
            new = self._commit_sha(repo_id, sha, files, header.get("summary", ""))
            repo.commits[new] = files
            branch = revision if revision in repo.branches else None
            if branch is None:
                raise HubError(400, f"can only commit to a branch, not {revision}")
            repo.branches[branch] = new
            repo.messages.append(header.get("summary", ""))
        self._json(handler, {"success": True, "commitOid": new,
                             "commitUrl": f"{self.url}/datasets/{repo_id}/commit/{new}"})
