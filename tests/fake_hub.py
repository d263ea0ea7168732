"""A loopback stand-in for the Hugging Face Hub: just enough HTTP API for create_repo + upload_folder.

What it speaks, as huggingface_hub 2.4.0 calls it:

- POST /api/repos/create                        -> {"url": ...}, 409 if the repo exists
- GET  /api/models/{repo}                        -> repo info (huggingface_hub asks after a 401/403 on create)
- POST /api/validate-yaml                        -> README.md metadata check, always valid
- POST /api/models/{repo}/preupload/{rev}        -> "lfs" or "regular" per file, decided like the Hub does
- POST /{repo}.git/info/lfs/objects/batch        -> LFS batch API, "basic" transfer (one PUT) plus "verify"
- PUT  /lfs-storage/{oid}                        -> the pre-signed storage URL; content must hash to oid
- POST /{repo}.git/info/lfs/objects/verify       -> 404 unless that object was stored with that size
- POST /api/models/{repo}/commit/{rev}           -> NDJSON: base64 "file" lines and "lfsFile" pointers

and, for downloads (`snapshot_download`, `list_repo_files`, as mergekit fetches a Hub id):

- GET  /api/models/{repo}/revision/{rev}         -> repo info with its files ("siblings")
- GET  /api/models/{repo}/tree/{rev}             -> every file, one page
- HEAD/GET /{repo}/resolve/{rev}/{path}          -> the file, with the commit and ETag headers the client checks

Every request is recorded. A commit is applied only if every lfsFile pointer names an object that
was really PUT, so `files` holds exactly what a Hub repo would then contain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "hf_dummy_token_for_tests"

# Patterns of the .gitattributes a new Hub repo starts with (abridged): the Hub stores them in LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack", ".npy", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024

_REPO = r"(?P<repo>[^/]+/[^/]+)"
COMMIT = "0" * 40  # the one revision every repo has


@dataclass
class Raw:
    """A file's bytes as the answer, rather than JSON."""

    content: bytes
    headers: dict


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict  # lower-cased names
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeHub:
    """The server's state; `token` is the only token it accepts, `read_only` forbids writes."""

    token: str
    read_only: bool = False
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> creation payload
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo_id -> path -> content
    commits: list[dict] = field(default_factory=list)  # header lines of the applied commits
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def handle(self, request: Request) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(request)
            if request.method == "PUT" and (m := re.fullmatch(r"/lfs-storage/(?P<oid>[0-9a-f]{64})", request.path)):
                return self._store_lfs_object(m["oid"], request.body)  # pre-signed: no Hub token
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "Invalid credentials in Authorization header"}
            for method, pattern, action in self._routes():
                if request.method == method and (m := re.fullmatch(pattern, request.path)):
                    return action(request, **m.groupdict())
            return 404, {"error": f"fake hub: no route for {request.method} {request.path}"}

    def _routes(self):
        return [
            ("POST", r"/api/repos/create", self._create_repo),
            ("GET", rf"/api/models/{_REPO}", self._repo_info),
            ("POST", r"/api/validate-yaml", lambda request: (200, {"errors": [], "warnings": []})),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", self._revision),
            ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)", self._tree),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
        ]

    def _revision(self, request: Request, repo: str, rev: str):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": path} for path in sorted(self.files[repo])]}

    def _tree(self, request: Request, repo: str, rev: str):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, [{"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                     for path, content in sorted(self.files[repo].items())]

    def _resolve(self, request: Request, repo: str, rev: str, path: str):
        content = self.files.get(repo, {}).get(path)
        if content is None:
            return 404, {"error": "Entry not found"}
        return 200, Raw(content, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'})

    def _create_repo(self, request: Request):
        payload = request.json()
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if self.read_only:
            return 403, {"error": "You don't have the rights to create a model under this namespace"}
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.repos[repo_id] = payload
        self.files[repo_id] = {}
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def _repo_info(self, request: Request, repo: str):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"id": repo, "sha": "0" * 40, "private": self.repos[repo].get("visibility") == "private"}

    def _preupload(self, request: Request, repo: str, rev: str):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        modes = []
        for entry in request.json()["files"]:
            sample = base64.b64decode(entry["sample"])
            lfs = entry["path"].endswith(LFS_SUFFIXES) or entry["size"] >= LFS_MIN_SIZE or b"\0" in sample
            modes.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": modes}

    def _lfs_batch(self, request: Request, repo: str):
        payload = request.json()
        if repo not in self.repos or payload["operation"] != "upload" or "basic" not in payload["transfers"]:
            return 422, {"message": "fake hub: only basic uploads to existing repos"}
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:  # no "actions": the client skips objects already stored
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}

    def _store_lfs_object(self, oid: str, content: bytes):
        if hashlib.sha256(content).hexdigest() != oid:
            return 400, {"error": "content does not match its sha256"}
        self.lfs_objects[oid] = content
        return 200, {}

    def _lfs_verify(self, request: Request, repo: str):
        payload = request.json()
        content = self.lfs_objects.get(payload["oid"])
        if content is None or len(content) != payload["size"]:
            return 404, {"error": "object not uploaded"}
        return 200, {}

    def _commit(self, request: Request, repo: str, rev: str):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header, changes = lines[0], {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None or len(content) != value["size"]:
                    return 400, {"error": f"LFS object for {value['path']} was never uploaded"}
                changes[value["path"]] = content
            else:
                return 400, {"error": f"fake hub: unsupported commit operation {line['key']}"}
        self.files[repo].update(changes)
        self.commits.append(header["value"])
        oid = hashlib.sha1(request.body).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # a stuck client cannot hold a handler thread longer than this
    hub: FakeHub

    def _serve(self) -> None:
        url = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, url.path, parse_qs(url.query), headers, self._body())
        status, payload = self.hub.handle(request)
        raw = isinstance(payload, Raw)
        body = payload.content if raw else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        for name, value in (payload.headers.items() if raw else ()):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = _serve

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass


class serve:
    """`with serve(hub) as url:` runs `hub` on an ephemeral loopback port, in a background thread."""

    def __init__(self, hub: FakeHub):
        self.hub = hub
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        host, port = self.server.server_address[:2]
        self.hub.url = f"http://{host}:{port}"
        self.thread.start()
        return self.hub.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
