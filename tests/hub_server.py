"""A local Hugging Face Hub for tests: the subset of the Hub HTTP API that huggingface_hub 2.x, datasets, transformers
and peft use to create repos, commit (regular and Git-LFS files), branch, list and download. Standard library only.

    with LocalHub(tmp_path) as hub:      # starts on 127.0.0.1 with a free port
        hub.environ()                    # HF_ENDPOINT, a dummy HF_TOKEN, HF_HUB_DISABLE_XET=1, a temporary HF_HOME
        hub.fail_next(2, 503)            # the next two requests answer 503 (fault injection)

Repos live in memory; file contents are stored once per sha256 under the temporary directory. Each commit is a full
snapshot `{path: FileEntry}` of its branch, so any commit id or branch name resolves to a consistent tree.
"""

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


USER = "tester"
ORGS = ("sso-org",)
LFS_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".h5",
    ".msgpack",
    ".zip",
    ".gz",
    ".tar",
    ".npy",
    ".npz",
    ".pkl",
    ".onnx",
    ".model",
)
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FileEntry:
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        commit_id = self.branches.get(revision, revision)
        return self.commits.get(commit_id)


class HubState:
    def __init__(self, root: Path):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.faults: list[int] = []  # statuses of the next requests to fail
        self.requests: list[str] = []  # "METHOD path" of every request, for tests

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob(sha)
        if not path.exists():
            path.write_bytes(data)
        return sha

    def new_commit(self, repo: Repo, branch: str, files: dict[str, FileEntry], title: str) -> Commit:
        parent = repo.branches.get(branch)
        commit = Commit(
            uuid.uuid4().hex + uuid.uuid4().hex[:8],
            parent,
            title,
            time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            files,
        )
        repo.commits[commit.id] = commit
        repo.branches[branch] = commit.id
        return commit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "LocalHubServer"

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self):
        self.server.connections.discard(self.connection)
        super().finish()

    # -- plumbing -----------------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None):
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else None)

    def _url(self, path: str) -> str:
        return f"http://{self.headers.get('Host')}{path}"

    def _dispatch(self):
        state = self.server.state
        parsed = urlparse(self.path)
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""  # always read the body fully
        with state.lock:
            state.requests.append(f"{self.command} {parsed.path}")
            if state.faults:
                status = state.faults.pop(0)
                return self._error(status, f"Injected failure ({status}).")
        if self.headers.get("Authorization", "") in ("", "Bearer "):
            # Writes need a token; LFS uploads go to a pre-signed URL (on the Hub, a storage bucket) and carry none,
            # and card metadata can be validated anonymously
            if self.command not in ("GET", "HEAD") and not parsed.path.startswith(
                ("/lfs-upload/", "/api/validate-yaml")
            ):
                return self._error(401, "Invalid credentials in Authorization header.")
        for method, pattern, handler in ROUTES:
            if method == self.command:
                match = re.fullmatch(pattern, parsed.path)
                if match:
                    with state.lock:
                        return handler(self, state, body, parse_qs(parsed.query), **match.groupdict())
        return self._error(404, f"No route for {self.command} {parsed.path}.")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # -- helpers ------------------------------------------------------------------------------------------------------

    def _repo(self, state: HubState, kind: str, repo_id: str) -> Repo | None:
        repo = state.repos.get((TYPES.get(kind, kind), repo_id))
        if repo is None:
            self._error(404, f"Repository {repo_id} not found.", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Revision {unquote(revision)} not found.", "RevisionNotFound")
        return commit

    def _lookup(self, state: HubState, kind: str, repo_id: str, revision: str) -> tuple[Repo, Commit] | None:
        """The repo and the commit a revision names, or `None` once a 404 has been sent."""
        repo = self._repo(state, kind, repo_id)
        commit = self._commit(repo, revision) if repo is not None else None
        return (repo, commit) if commit is not None else None


def _entry_json(path: str, entry: FileEntry) -> dict:
    out = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
    if entry.lfs:
        out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
    return out


def _tree(files: dict[str, FileEntry], prefix: str, recursive: bool) -> list[dict]:
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    out, folders = [], set()
    for path, entry in sorted(files.items()):
        if not path.startswith(base):
            continue
        rest = path[len(base) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            folder = base + "/".join(parts[:depth])
            if (recursive or depth == 1) and folder not in folders:
                folders.add(folder)
                out.append(
                    {"type": "directory", "path": folder, "size": 0, "oid": hashlib.sha1(folder.encode()).hexdigest()}
                )
        if recursive or len(parts) == 1:
            out.append(_entry_json(path, entry))
    return out


def _card_data(state: HubState, commit: Commit) -> dict | None:
    entry = commit.files.get("README.md")
    if entry is None:
        return None
    text = state.blob(entry.sha256).read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---", text, flags=re.DOTALL)
    if not match:
        return None
    import yaml

    return yaml.safe_load(match.group(1)) or None


# -- routes -----------------------------------------------------------------------------------------------------------

REPO = r"(?P<kind>models|datasets|spaces)/(?P<repo_id>[^/]+/[^/]+)"
FILE_REPO = r"/(?:(?P<prefix>datasets|spaces)/)?(?P<repo_id>[^/]+/[^/]+)"


def whoami(h, state, body, query):
    h._json(
        200,
        {
            "type": "user",
            "name": USER,
            "fullname": "Test User",
            "orgs": [{"name": o, "type": "org"} for o in ORGS],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        },
    )


def create_repo(h, state, body, query):
    payload = json.loads(body or b"{}")
    kind = payload.get("type") or "model"
    namespace = payload.get("organization") or USER
    if namespace != USER and namespace not in ORGS:
        return h._error(404, f"Namespace {namespace} not found: you can create repos under {[USER, *ORGS]}.")
    repo_id = f"{namespace}/{payload['name']}"
    url = h._url(("" if kind == "model" else f"/{kind}s") + f"/{repo_id}")
    if (kind, repo_id) in state.repos:
        return h._json(409, {"error": "You already created this repo", "url": url})
    repo = Repo(kind, repo_id, bool(payload.get("private")) or payload.get("visibility") == "private")
    state.repos[(kind, repo_id)] = repo
    state.new_commit(repo, "main", {}, "initial commit")
    h._json(200, {"url": url, "name": repo_id, "id": repo_id})


def delete_repo(h, state, body, query):
    payload = json.loads(body or b"{}")
    key = (payload.get("type") or "model", f"{payload.get('organization') or USER}/{payload['name']}")
    if state.repos.pop(key, None) is None:
        return h._error(404, "Repository not found.", "RepoNotFound")
    h._json(200, {})


def validate_yaml(h, state, body, query):
    h._json(200, {"errors": [], "warnings": []})


def repo_info(h, state, body, query, kind, repo_id, revision=None):
    found = h._lookup(state, kind, repo_id, revision or "main")
    if found is None:
        return
    repo, commit = found
    info = {
        "id": repo_id,
        "_id": repo_id,
        "sha": commit.id,
        "private": repo.private,
        "lastModified": commit.date,
        "siblings": [
            {
                "rfilename": p,
                "size": e.size,
                **({"lfs": {"sha256": e.sha256, "size": e.size, "pointerSize": 134}} if e.lfs else {}),
            }
            for p, e in sorted(commit.files.items())
        ],
        "tags": [],
        "downloads": 0,
        "likes": 0,
        "disabled": False,
        "gated": False,
        "cardData": _card_data(state, commit),
    }
    if repo.type == "model":
        info["modelId"] = repo_id
    h._json(200, info)


def preupload(h, state, body, query, kind, repo_id, revision):
    repo = h._repo(state, kind, repo_id)
    if repo is None:
        return
    commit = repo.resolve(revision)
    files = []
    for item in json.loads(body)["files"]:
        sample = base64.b64decode(item.get("sample") or "")
        lfs = item["size"] >= 10_000_000 or b"\0" in sample or item["path"].lower().endswith(LFS_SUFFIXES)
        existing = commit.files.get(item["path"]) if commit else None
        files.append(
            {
                "path": item["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
                "oid": existing.git_oid if existing else None,
            }
        )
    h._json(200, {"files": files, "commitOid": commit.id if commit else None})


def lfs_batch(h, state, body, query, repo_id, prefix=None):
    payload = json.loads(body)
    objects = []
    for obj in payload.get("objects", []):
        out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if not state.blob(obj["oid"]).exists():
            out["actions"] = {"upload": {"href": h._url(f"/lfs-upload/{obj['oid']}"), "header": {}}}
        objects.append(out)
    h._send(
        200,
        json.dumps({"transfer": "basic", "objects": objects}).encode(),
        content_type="application/vnd.git-lfs+json",
    )


def lfs_upload(h, state, body, query, oid):
    if hashlib.sha256(body).hexdigest() != oid:
        return h._error(400, "Uploaded content does not match its oid.")
    state.store(body)
    h._send(200)


def commit(h, state, body, query, kind, repo_id, revision):
    repo = h._repo(state, kind, repo_id)
    if repo is None:
        return
    branch = unquote(revision)
    base = repo.resolve(branch)
    if base is None or branch not in repo.branches:
        return h._error(404, f"Branch {branch} not found.", "RevisionNotFound")
    files = dict(base.files)
    title = "commit"
    for line in body.decode().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            title = value.get("summary") or title
        elif key == "file":
            data = base64.b64decode(value["content"])
            files[value["path"]] = FileEntry(len(data), state.store(data), git_blob_sha1(data), False)
        elif key == "lfsFile":
            if not state.blob(value["oid"]).exists():
                return h._error(400, f"LFS object {value['oid']} was never uploaded.")
            files[value["path"]] = FileEntry(value["size"], value["oid"], value["oid"], True)
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            files = {p: e for p, e in files.items() if not p.startswith(folder)}
    new = state.new_commit(repo, branch, files, title)
    url_prefix = "" if repo.type == "model" else f"/{repo.type}s"
    h._json(
        200,
        {
            "commitOid": new.id,
            "commitUrl": h._url(f"{url_prefix}/{repo_id}/commit/{new.id}"),
            "commitMessage": title,
            "pullRequestUrl": None,
        },
    )


def tree(h, state, body, query, kind, repo_id, revision, path=""):
    found = h._lookup(state, kind, repo_id, revision)
    if found is None:
        return
    repo, c = found
    path = unquote(path or "")
    if path and path not in c.files and not any(p.startswith(path.rstrip("/") + "/") for p in c.files):
        return h._error(404, f"{path} not found.", "EntryNotFound")
    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
    h._json(200, _tree(c.files, path, recursive))


def paths_info(h, state, body, query, kind, repo_id, revision):
    found = h._lookup(state, kind, repo_id, revision)
    if found is None:
        return
    repo, c = found
    if h.headers.get("Content-Type", "").startswith("application/json"):
        paths = json.loads(body).get("paths", [])
    else:
        paths = parse_qs(body.decode()).get("paths", [])
    out = []
    for path in paths:
        path = path.strip("/")
        if path in c.files:
            out.append(_entry_json(path, c.files[path]))
        elif any(p.startswith(path + "/") for p in c.files):
            out.append({"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()})
    h._json(200, out)


def refs(h, state, body, query, kind, repo_id):
    repo = h._repo(state, kind, repo_id)
    if repo is None:
        return
    h._json(
        200,
        {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()],
            "tags": [],
            "converts": [],
        },
    )


def commits(h, state, body, query, kind, repo_id, revision):
    repo = h._repo(state, kind, repo_id)
    if repo is None:
        return
    c, out = h._commit(repo, revision), []
    while c is not None:
        out.append({"id": c.id, "title": c.title, "message": "", "date": c.date, "authors": [{"user": USER}]})
        c = repo.commits.get(c.parent) if c.parent else None
    h._json(200, out)


def create_branch(h, state, body, query, kind, repo_id, branch):
    repo = h._repo(state, kind, repo_id)
    if repo is None:
        return
    branch = unquote(branch)
    if branch in repo.branches:
        return h._error(409, f"Branch {branch} already exists.")
    start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
    base = h._commit(repo, start)
    if base is None:
        return
    repo.branches[branch] = base.id
    h._json(200, {})


def resolve(h, state, body, query, repo_id, revision, path, prefix=None):
    repo = state.repos.get((TYPES.get(f"{prefix}", "model") if prefix else "model", repo_id))
    if repo is None:
        return h._error(404, "Repository not found.", "RepoNotFound")
    c = repo.resolve(revision)
    if c is None:
        return h._error(404, "Revision not found.", "RevisionNotFound")
    entry = c.files.get(unquote(path))
    if entry is None:
        return h._error(404, "Entry not found.", "EntryNotFound")
    data = state.blob(entry.sha256).read_bytes()
    headers = {"X-Repo-Commit": c.id, "ETag": f'"{entry.git_oid}"', "Accept-Ranges": "bytes"}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    status = 200
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", h.headers.get("Range", ""))
    if match and (match.group(1) or match.group(2)):
        start = int(match.group(1)) if match.group(1) else max(len(data) - int(match.group(2)), 0)
        end = int(match.group(2)) if match.group(1) and match.group(2) else len(data) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        data, status = data[start : end + 1], 206
    h._send(status, data, headers, content_type="application/octet-stream")


ROUTES = [
    ("GET", r"/api/whoami-v2", whoami),
    ("POST", r"/api/repos/create", create_repo),
    ("DELETE", r"/api/repos/delete", delete_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("GET", rf"/api/{REPO}(?:/revision/(?P<revision>[^/]+))?", repo_info),
    ("POST", rf"/api/{REPO}/preupload/(?P<revision>[^/]+)", preupload),
    ("POST", rf"/api/{REPO}/commit/(?P<revision>[^/]+)", commit),
    ("GET", rf"/api/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", tree),
    ("POST", rf"/api/{REPO}/paths-info/(?P<revision>[^/]+)", paths_info),
    ("GET", rf"/api/{REPO}/refs", refs),
    ("GET", rf"/api/{REPO}/commits/(?P<revision>[^/]+)", commits),
    ("POST", rf"/api/{REPO}/branch/(?P<branch>[^/]+)", create_branch),
    ("POST", rf"{FILE_REPO}\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", lfs_upload),
    ("GET", rf"{FILE_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", resolve),
    ("HEAD", rf"{FILE_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", resolve),
]


class LocalHubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = HubState(root)
        self.connections: set[socket.socket] = set()  # open keep-alive connections, closed on stop


class LocalHub:
    """Start and stop a `LocalHubServer` in a thread; see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.server = LocalHubServer(self.root / "hub")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def state(self) -> HubState:
        return self.server.state

    def environ(self) -> dict[str, str]:
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": "hf_dummy_local_token_0123456789",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(self.root / "hf_home"),
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
        }

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.state.lock:
            self.state.faults.extend([status] * count)

    def __enter__(self):
        self.thread.start()
        return self

    def stop(self):
        """Stop serving and drop every open connection, as a server that goes away would."""
        self.server.shutdown()
        self.server.server_close()
        for connection in list(self.server.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.stop()
