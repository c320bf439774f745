"""A local Hugging Face Hub for tests: the routes the real ``huggingface_hub`` 2.4 client calls, over HTTP.

Implemented from the client's source (``hf_api.py``, ``file_download.py``, ``_commit_api.py``, ``lfs.py``,
``_snapshot_download.py``, ``utils/_http.py``), with git-like semantics: every commit is a new sha over the
whole file set of its parent, branches, tags and pull-request refs point at commits, and reading at any
revision returns that revision's files. Uploads take the legacy LFS path (``HF_HUB_DISABLE_XET=1``): preupload
decides regular or LFS, LFS batch hands out upload/verify URLs on this server, and the NDJSON commit
references the uploaded objects. Pull requests are opened by a commit with ``create_pr`` or through the
discussions API (listed page by page, with details, closed and reopened), and take commits at ``refs/pr/N``.
Repos are created and deleted by the API (``POST /api/repos/create``, ``DELETE /api/repos/delete``).

Errors carry the ``X-Error-Code`` / ``X-Error-Message`` headers the client maps to its exceptions
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``). Tokens: a write token, a read-only token (writes
get 403), another user's write token and tokens minted by the OIDC exchange (``POST /oauth/token``). Private
repos need a token of their namespace. ``fail(route, status, times)`` makes the next requests of a route fail
(status 0 drops the connection); ``cut(route, at)`` drops it when a file's bytes being sent reach byte ``at``
(``after=route`` holds it there until a request of that route has come, so a test knows how far a run got).
Hugging Face Jobs (``/api/jobs/...``) live in ``tests/hub_jobs.py``. A revision's history
(``list_repo_commits``); LFS objects listed (``list_lfs_files``) and permanently deleted from every commit
(``permanently_delete_lfs_files``, history rewritten).

File reads answer like the Hub's resolve endpoint: LFS files redirect (302, with ``X-Linked-Size``,
``X-Linked-Etag`` and ``X-Repo-Commit``) to a second, CDN-like origin on another port, which serves the bytes;
both honour ``Range: bytes=a-b`` (206 with ``Content-Range``; 416 when unsatisfiable). ``bandwidth_down`` and
``bandwidth_up`` (bytes per second, shared by all connections) throttle file bodies sent and uploads received.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests import hub_jobs

WRITE_TOKEN = "hf_test_write_token"
READ_TOKEN = "hf_test_read_token"
OTHER_TOKEN = "hf_test_other_token"  # another user, who may write to the organisation too
USER = "cocktail-tester"
OTHER_USER = "someone-else"
ORG = "cocktail"
DISCUSSIONS_PER_PAGE = 50
STEP = 1 << 20  # bytes per write of a file body or read of an upload: the unit of throttling

LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.model",
    "*.gguf",
    "*.npy",
    "*.npz",
    "*.pkl",
    "*.zip",
    "*.gz",
    "*.tar",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS
).encode()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file at one commit: content plus the ids the Hub reports for it."""

    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @functools.cached_property
    def blob_id(self) -> str:
        return git_blob_id(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    description: str = ""
    author: str = USER


@dataclass
class PullRequest:
    """A Hub pull request: ``refs/pr/N`` points at ``head``; ``events`` are what its page shows, in order."""

    num: int
    title: str
    base: str
    head: str
    status: str = "open"
    author: str = USER
    created_at: str = field(default_factory=lambda: _iso_now())
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, PullRequest] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> str | None:
        """Branch, tag, ``refs/heads/x``, ``refs/tags/x``, ``refs/pr/N`` or a full commit sha -> the sha."""
        if revision.startswith("refs/pr/") and revision[8:].isdigit():
            pr = self.pull_requests.get(int(revision[8:]))
            return pr.head if pr else None
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if name in self.branches:
            return self.branches[name]
        if name in self.tags:
            return self.tags[name]
        return revision if revision in self.commits else None


@dataclass(frozen=True)
class Token:
    user: str
    namespaces: frozenset[str]
    write: bool
    expires_at: float | None = None  # time.monotonic() after which the Hub refuses it (OIDC-minted tokens)


@dataclass(frozen=True)
class Request:
    """What the server saw: route name, method, repo, for file routes the file path, and the Range asked."""

    method: str
    route: str
    repo_id: str | None
    path: str | None
    revision: str | None
    token: str | None
    range: str | None = None


class Throttle:
    """A shared bandwidth limit: callers reserve time for their bytes in turn (None: unlimited); ``total``
    counts the bytes."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.total = 0
        self._next = 0.0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes
            if not self.rate:
                return
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            wait = self._next - now
        time.sleep(wait)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single ``bytes=`` range, or None when it cannot be satisfied."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        start = max(0, size - int(last))
        return (start, size - 1) if size and int(last) else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _front_matter(readme: bytes) -> dict[str, Any] | None:
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


class HubServer:
    """The state (repos, LFS objects, tokens) and the HTTP server in a thread on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.tokens: dict[str, Token] = {
            WRITE_TOKEN: Token(USER, frozenset({USER, ORG}), write=True),
            READ_TOKEN: Token(USER, frozenset({USER, ORG}), write=False),
            OTHER_TOKEN: Token(OTHER_USER, frozenset({OTHER_USER, ORG}), write=True),
        }
        self.discussions_per_page = DISCUSSIONS_PER_PAGE
        self.oidc_subject_tokens: dict[str, str] = {}  # id token -> the resource it may be exchanged for
        self.oidc_expires_in = 3600  # seconds a minted token lives (tests of long runs shorten it)
        self.requests: list[Request] = []
        self.jobs = hub_jobs.Jobs()  # Hugging Face Jobs (tests/hub_jobs.py)
        self._failures: list[list[Any]] = []  # [route, method, status, remaining, error code, headers]
        self._cuts: list[list[Any]] = []  # [route, byte where the connection drops, remaining, after route]
        self.down, self.up = Throttle(), Throttle()
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # The storage the Hub redirects LFS reads to: another origin, so the client drops its token there.
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._cdn.daemon_threads = True
        self._cdn.hub = self  # type: ignore[attr-defined]
        self.cdn_endpoint = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=server.serve_forever, name=name, daemon=True)
            for server, name in ((self._httpd, "hub-server"), (self._cdn, "hub-cdn"))
        ]

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.jobs.stop()
        for server in (self._httpd, self._cdn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def bandwidth_down(self) -> float | None:
        return self.down.rate

    @bandwidth_down.setter
    def bandwidth_down(self, rate: float | None) -> None:
        self.down.rate = rate

    @property
    def bandwidth_up(self) -> float | None:
        return self.up.rate

    @bandwidth_up.setter
    def bandwidth_up(self, rate: float | None) -> None:
        self.up.rate = rate

    # -- seeding helpers for tests ---------------------------------------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False) -> Repo:
        """A repo with the Hub's initial commit (a ``.gitattributes`` on ``main``)."""
        with self._lock:
            if repo_id in self.repos:
                return self.repos[repo_id]
            repo = Repo(repo_id, private=private, gated=gated)
            self.repos[repo_id] = repo
            sha = self._new_commit(
                repo, None, {".gitattributes": Entry(GITATTRIBUTES, lfs=False)}, "initial commit"
            )
            repo.branches["main"] = sha
            return repo

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path],
        *,
        branch: str = "main",
        message: str = "seed",
        delete: tuple[str, ...] = (),
    ) -> str:
        """Commit ``files`` (bytes, text or a local file) on top of ``branch``, move it; the new sha."""
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            parent = repo.branches.get(branch) or repo.branches["main"]
            tree = dict(repo.commits[parent].files)
            for name in delete:
                tree.pop(name, None)
            for name, content in files.items():
                data = (
                    content.read_bytes()
                    if isinstance(content, Path)
                    else (content.encode() if isinstance(content, str) else content)
                )
                entry = Entry(data, lfs=self._is_lfs(name, len(data)))
                if entry.lfs:
                    self.lfs_objects[entry.sha256] = data
                tree[name] = entry
            sha = self._new_commit(repo, parent, tree, message)
            repo.branches[branch] = sha
            return sha

    def commit_folder(
        self,
        repo_id: str,
        folder: Path,
        *,
        branch: str = "main",
        message: str = "seed",
        exclude: tuple[str, ...] = (),
        extra: dict[str, bytes | str] | None = None,
    ) -> str:
        """Commit every file of a local folder (paths relative to it), except names matching ``exclude``."""
        files: dict[str, bytes | str | Path] = {
            path.relative_to(folder).as_posix(): path
            for path in sorted(folder.rglob("*"))
            if path.is_file()
            and not any(fnmatch.fnmatch(path.relative_to(folder).as_posix(), p) for p in exclude)
        }
        files.update(extra or {})
        return self.commit(repo_id, files, branch=branch, message=message)

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        with self._lock:
            repo = self.repos[repo_id]
            sha = repo.resolve(revision)
            assert sha is not None, f"no revision {revision} in {repo_id}"
            repo.tags[tag] = sha
            return sha

    def branch(self, repo_id: str, name: str, revision: str = "main") -> str:
        with self._lock:
            repo = self.repos[repo_id]
            sha = repo.resolve(revision)
            assert sha is not None, f"no revision {revision} in {repo_id}"
            repo.branches[name] = sha
            return sha

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        with self._lock:
            return self.repos[repo_id].resolve(revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """File name -> content at a revision (what a reader of that revision sees)."""
        with self._lock:
            repo = self.repos[repo_id]
            sha = repo.resolve(revision)
            assert sha is not None, f"no revision {revision} in {repo_id}"
            return {name: entry.data for name, entry in repo.commits[sha].files.items()}

    def fail(
        self,
        route: str,
        status: int = 500,
        times: int = 1,
        method: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Fail the next ``times`` requests of ``route`` (e.g. 'commit', 'lfs_upload') with ``status``.

        ``status=0`` drops the connection without an answer, like a network failure; ``code`` is sent as
        ``X-Error-Code`` (e.g. 'EntryNotFound'); ``headers`` go with the answer (``Retry-After``,
        ``RateLimit``/``RateLimit-Policy`` as the Hub sends them when it rate-limits).
        """
        with self._lock:
            self._failures.append([route, method, status, times, code, dict(headers or {})])

    def cut(self, route: str, at: int, times: int = 1, after: str | None = None) -> None:
        """Drop the connection of the next ``times`` answers of ``route`` (e.g. 'cdn') that send byte ``at``
        of a file, just before it, like a network failure in the middle of a download; a client that resumes
        from byte ``at`` is cut again while ``times`` lasts. With ``after`` (e.g. 'lfs_upload') the answer
        stalls at byte ``at`` until a request of that route has come, and drops then."""
        with self._lock:
            self._cuts.append([route, at, times, after])

    def heal(self) -> None:
        """Forget the failures and cuts not yet used up."""
        with self._lock:
            self._failures.clear()
            self._cuts.clear()

    def _take_cut(self, route: str, first: int, last: int) -> tuple[int, str | None] | None:
        with self._lock:
            for cut in self._cuts:
                if cut[0] == route and cut[2] > 0 and first <= cut[1] <= last:
                    cut[2] -= 1
                    return cut[1], cut[3]
        return None

    def _wait_for(self, route: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen(route) and time.monotonic() < deadline:
            time.sleep(0.01)

    def seen(self, route: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.route == route and (method is None or r.method == method)]

    # -- internals -------------------------------------------------------------------------------------------

    @staticmethod
    def _is_lfs(path: str, size: int) -> bool:
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)

    def _new_commit(
        self,
        repo: Repo,
        parent: str | None,
        files: dict[str, Entry],
        title: str,
        description: str = "",
        author: str = USER,
    ) -> str:
        listing = json.dumps(
            [parent, sorted((n, e.blob_id) for n, e in files.items()), title, next(self._counter)]
        )
        sha = hashlib.sha1(listing.encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, files, title, description, author)
        return sha

    def _open_pull_request(
        self, repo: Repo, title: str, description: str, base: str, author: str
    ) -> PullRequest:
        """A new pull request against branch ``base``, its ref at the base's head, its description the first
        comment (as on the Hub)."""
        num = max([0, *repo.pull_requests]) + 1
        pr = PullRequest(num, title, base, repo.branches[base], author=author)
        pr.events.append(
            self._event("comment", author, edited=False, hidden=False, latest={"raw": description})
        )
        repo.pull_requests[num] = pr
        return pr

    def _event(self, kind: str, author: str, **data: Any) -> dict[str, Any]:
        return {
            "id": f"{next(self._counter):024x}",
            "type": kind,
            "createdAt": _iso_now(),
            "author": {"name": author},
            "data": data,
        }

    def _take_failure(self, route: str, method: str) -> tuple[int, str | None, dict[str, str]] | None:
        with self._lock:
            for failure in self._failures:
                if failure[0] == route and failure[1] in (None, method) and failure[3] > 0:
                    failure[3] -= 1
                    return failure[2], failure[4], failure[5]
        return None


def _route(method: str, parts: list[str]) -> tuple[str, str | None, dict[str, str]]:
    """(route name, repo id, parameters) for a request path split into unquoted segments."""
    n = len(parts)
    if parts[:2] == ["api", "whoami-v2"]:
        return "whoami", None, {}
    if parts[:3] == ["api", "repos", "create"]:
        return "create_repo", None, {}
    if parts[:3] == ["api", "repos", "delete"] and method == "DELETE":
        return "delete_repo", None, {}
    if parts[:2] == ["api", "validate-yaml"]:
        return "validate_yaml", None, {}
    if parts[:2] == ["oauth", "token"]:
        return "oauth_token", None, {}
    if n >= 3 and parts[:2] == ["api", "jobs"]:
        return hub_jobs.route(method, parts)
    if n == 3 and parts[:2] == ["api", "models"]:  # a legacy id without a namespace ("gpt2")
        return "model_info", parts[2], {"revision": "main"}
    if n >= 4 and parts[:2] == ["api", "models"]:
        repo_id = f"{parts[2]}/{parts[3]}"
        rest = parts[4:]
        if not rest:
            return "model_info", repo_id, {"revision": "main"}
        kind = rest[0]
        if kind == "revision" and len(rest) == 2:
            return "model_info", repo_id, {"revision": rest[1]}
        if kind == "tree" and len(rest) >= 2:
            return "tree", repo_id, {"revision": rest[1], "path": "/".join(rest[2:])}
        if kind == "refs":
            return "refs", repo_id, {}
        if kind == "commits" and len(rest) == 2:
            return "commits", repo_id, {"revision": rest[1]}
        if rest == ["lfs-files"]:
            return "lfs_files", repo_id, {}
        if rest == ["lfs-files", "batch"]:
            return "lfs_files_delete", repo_id, {}
        if kind in ("branch", "preupload", "commit") and len(rest) == 2:
            return kind, repo_id, {"revision": rest[1]}
        if kind == "discussions" and len(rest) == 1:
            return ("create_discussion" if method == "POST" else "discussions"), repo_id, {}
        if kind == "discussions" and rest[1].isdigit() and len(rest) <= 3:
            route = "discussion_status" if rest[2:] == ["status"] else "discussion_details"
            return route, repo_id, {"num": rest[1]}
    if n == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
        return "lfs_batch", f"{parts[0]}/{parts[1][:-4]}", {}
    if n == 4 and parts[0] == "lfs-upload":
        return "lfs_upload", f"{parts[1]}/{parts[2]}", {"oid": parts[3]}
    if n == 3 and parts[0] == "lfs-verify":
        return "lfs_verify", f"{parts[1]}/{parts[2]}", {}
    if n == 2 and parts[0] == "cdn":
        return "cdn", None, {"oid": parts[1]}
    if n >= 5 and parts[2] == "resolve":
        return "resolve", f"{parts[0]}/{parts[1]}", {"revision": parts[3], "path": "/".join(parts[4:])}
    return "unknown", None, {}


class _Handler(hub_jobs.JobRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cocktail-test-hub"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing --------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self._read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self._read(length) if length else b""

    def _read(self, size: int) -> bytes:
        """``size`` bytes of the request body, at most as fast as the upload bandwidth allows."""
        parts, left = [], size
        while left > 0:
            part = self.rfile.read(min(left, STEP))
            if not part:
                break
            self.hub.up.take(len(part))
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, data: bytes, headers: dict[str, str]) -> None:
        """A file's bytes, or the single range the request asks for (206), throttled to ``bandwidth_down``,
        cut short where a test asked for a dropped connection."""
        size, status = len(data), 200
        start, end = 0, size - 1
        requested = self.headers.get("Range")
        if requested:
            parsed = parse_range(requested, size)
            if parsed is None:
                raise HubError(416, f"range {requested} not satisfiable", extra_headers=f"bytes */{size}")
            (start, end), status = parsed, 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        route = _route(self.command, [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")])[0]
        cut = self.hub._take_cut(route, start, end)
        stop = end + 1 if cut is None else cut[0]
        view = memoryview(data)
        for offset in range(start, stop, STEP):
            piece = view[offset : min(offset + STEP, stop)]
            self.hub.down.take(len(piece))
            self.wfile.write(piece)
        if cut is not None:
            self.wfile.flush()
            if cut[1] is not None:
                self.hub._wait_for(cut[1])
            self.close_connection = True
            self.connection.shutdown(2)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        route, repo_id, params = _route(method, parts)
        token = self._token()
        with self.hub._lock:
            self.hub.requests.append(
                Request(
                    method,
                    route,
                    repo_id,
                    params.get("path"),
                    params.get("revision"),
                    token,
                    self.headers.get("Range"),
                )
            )
        injected = self.hub._take_failure(route, method)
        if injected is not None and injected[0] == 0:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        try:
            if injected is not None:
                raise HubError(injected[0], f"injected failure on {route}", injected[1])
            handler = getattr(self, f"_{route}", None)
            if handler is None:
                raise HubError(404, f"no route for {method} {split.path}")
            handler(method=method, repo_id=repo_id, params=params, query=query, body=body, token=token)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **(injected[2] if injected else {})}
            if error.code:
                headers["X-Error-Code"] = error.code
            if "extra_headers" in error.extra:  # a 416's Content-Range
                headers["Content-Range"] = error.extra.pop("extra_headers")
            self._json({"error": error.message, **error.extra}, error.status, headers)

    # -- authorisation ---------------------------------------------------------------------------------------

    def _caller(self, token: str | None) -> Token | None:
        if token is None:
            return None
        caller = self.hub.tokens.get(token)
        if caller is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if caller.expires_at is not None and time.monotonic() > caller.expires_at:
            raise HubError(401, "Expired token")
        return caller

    def _readable(self, repo_id: str | None, token: str | None) -> Repo:
        caller = self._caller(token)
        repo = self.hub.repos.get(repo_id or "")
        visible = repo is not None and (not repo.private or (caller and repo.namespace in caller.namespaces))
        if not visible:
            if caller is None:
                raise HubError(401, "Repository not found", "RepoNotFound")
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.gated and caller is None:
            raise HubError(401, "Access to this repo is restricted: you must be authenticated", "GatedRepo")
        return repo

    def _writable(self, repo_id: str | None, token: str | None) -> Repo:
        repo = self._readable(repo_id, token)
        self._check_write(repo.namespace, token)
        return repo

    def _check_write(self, namespace: str, token: str | None) -> Token:
        caller = self._caller(token)
        if caller is None:
            raise HubError(401, "You must be authenticated to write to the Hub")
        if not caller.write or namespace not in caller.namespaces:
            raise HubError(
                403,
                f"You don't have the rights to write to the namespace {namespace}: "
                "this token has no write permission",
            )
        return caller

    @staticmethod
    def _sha_at(repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- routes ----------------------------------------------------------------------------------------------

    def _whoami(self, *, token: str | None, **_: Any) -> None:
        caller = self._caller(token)
        if caller is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        role = "write" if caller.write else "read"
        orgs = [{"name": ns, "type": "org"} for ns in sorted(caller.namespaces - {caller.user})]
        self._json(
            {
                "type": "user",
                "name": caller.user,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
            }
        )

    def _create_repo(self, *, body: bytes, token: str | None, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "this test Hub only hosts models")
        caller = self._caller(token)
        namespace = payload.get("organization") or (caller.user if caller else None)
        if namespace is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            self._check_write(namespace, token)
            raise HubError(409, "You already created this model repo", url=url)
        self._check_write(namespace, token)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.create_repo(repo_id, private=private)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, *, body: bytes, token: str | None, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "this test Hub only hosts models")
        caller = self._caller(token)
        namespace = payload.get("organization") or (caller.user if caller else None)
        repo_id = f"{namespace}/{payload['name']}"
        self._writable(repo_id, token)
        del self.hub.repos[repo_id]
        self._send(200, b"")

    def _validate_yaml(self, *, body: bytes, **_: Any) -> None:
        content = json.loads(body or b"{}").get("content", "")
        try:
            _front_matter(content.encode())
        except yaml.YAMLError as error:
            self._json({"errors": [{"message": str(error)}], "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def _oauth_token(self, *, body: bytes, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        resource = self.hub.oidc_subject_tokens.get(payload.get("subject_token", ""))
        if resource is None or resource != payload.get("resource"):
            # As the Hub answers when no trusted publisher of the resource matches the id token's claims.
            raise HubError(
                400,
                "invalid_grant",
                error_description="no trusted publisher of this resource matches the token's claims",
            )
        access = f"hf_oidc_{next(self.hub._counter)}"
        namespace = resource.split("/")[0]
        lifetime = self.hub.oidc_expires_in
        self.hub.tokens[access] = Token(
            f"oidc-{namespace}", frozenset({namespace}), write=True, expires_at=time.monotonic() + lifetime
        )
        self._json({"access_token": access, "token_type": "bearer", "expires_in": lifetime})

    def _model_info(self, *, repo_id: str, params: dict, query: dict, token: str | None, **_: Any) -> None:
        repo = self._readable(repo_id, token)
        sha = self._sha_at(repo, params["revision"])
        files = repo.commits[sha].files
        blobs = query.get("blobs", "").lower() == "true"
        siblings = []
        for name, entry in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo.namespace,
            "sha": sha,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "lastModified": _iso_now(),
            "createdAt": _iso_now(),
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": siblings,
        }
        if "README.md" in files and (card := _front_matter(files["README.md"].data)):
            info["cardData"] = card
            if "library_name" in card:
                info["library_name"] = card["library_name"]
        if "config.json" in files:
            config = json.loads(files["config.json"].data)
            info["config"] = {
                k: config[k] for k in ("architectures", "model_type", "auto_map") if k in config
            }
        self._json(info)

    def _tree(self, *, repo_id: str, params: dict, query: dict, token: str | None, **_: Any) -> None:
        repo = self._readable(repo_id, token)
        sha = self._sha_at(repo, params["revision"])
        prefix = params["path"].strip("/")
        recursive = query.get("recursive", "").lower() == "true"
        entries, folders = [], set()
        for name, entry in sorted(repo.commits[sha].files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            relative = name[len(prefix) + 1 :] if prefix else name
            if not recursive and "/" in relative:
                folders.add((prefix + "/" if prefix else "") + relative.split("/")[0])
                continue
            if recursive:
                parents = relative.split("/")[:-1]
                folders.update(
                    (prefix + "/" if prefix else "") + "/".join(parents[: i + 1]) for i in range(len(parents))
                )
            item: dict[str, Any] = {"type": "file", "path": name, "size": entry.size, "oid": entry.blob_id}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer)}
            entries.append(item)
        if prefix and not entries and not folders:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        tree = [
            {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
            for f in sorted(folders)
        ]
        self._json(tree + entries)

    def _refs(self, *, repo_id: str, query: dict, token: str | None, **_: Any) -> None:
        repo = self._readable(repo_id, token)

        def ref(name: str, full: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": sha}

        data: dict[str, Any] = {
            "branches": [ref(n, f"refs/heads/{n}", s) for n, s in sorted(repo.branches.items())],
            "tags": [ref(n, f"refs/tags/{n}", s) for n, s in sorted(repo.tags.items())],
            "converts": [],
        }
        if query.get("include_prs"):
            data["pullRequests"] = [
                ref(f"refs/pr/{n}", f"refs/pr/{n}", pr.head) for n, pr in sorted(repo.pull_requests.items())
            ]
        self._json(data)

    def _branch(self, *, repo_id: str, params: dict, body: bytes, token: str | None, **_: Any) -> None:
        repo = self._writable(repo_id, token)
        name = params["revision"]
        if name in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{name}")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        with self.hub._lock:
            repo.branches[name] = self._sha_at(repo, start)
        self._json({})

    def _writable_branch(self, repo: Repo, revision: str, create_pr: bool) -> str:
        """The head a commit or preupload at ``revision`` builds on; only branches and PRs take commits."""
        is_pr = revision.startswith("refs/pr/")
        name = revision.removeprefix("refs/heads/")
        if not is_pr and name not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if is_pr and create_pr:
            raise HubError(400, "Cannot open a pull request on a pull request ref")
        return self._sha_at(repo, revision if is_pr else name)

    def _preupload(
        self, *, repo_id: str, params: dict, query: dict, body: bytes, token: str | None, **_: Any
    ) -> None:
        repo = self._writable(repo_id, token)
        head = self._writable_branch(repo, params["revision"], bool(query.get("create_pr")))
        current = repo.commits[head].files
        answer = []
        for item in json.loads(body)["files"]:
            path, size = item["path"], int(item["size"])
            lfs = HubServer._is_lfs(path, size)
            old = current.get(path)
            oid = (old.sha256 if old.lfs else old.blob_id) if old is not None and old.lfs == lfs else None
            answer.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json({"files": answer, "commitOid": head})

    def _commit(
        self, *, repo_id: str, params: dict, query: dict, body: bytes, token: str | None, **_: Any
    ) -> None:
        repo = self._writable(repo_id, token)
        caller = self._caller(token)
        create_pr = bool(query.get("create_pr"))
        revision = params["revision"]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header")
        header = lines[0]["value"]
        with self.hub._lock:
            head = self._writable_branch(repo, revision, create_pr)
            parent_commit = header.get("parentCommit")
            if parent_commit and not create_pr and not head.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            base = repo.resolve(parent_commit) if parent_commit and create_pr else head
            if base is None:
                raise HubError(404, f"Invalid rev id: {parent_commit}", "RevisionNotFound")
            tree = dict(repo.commits[base].files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    tree[path] = Entry(data, lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HubError(
                            422,
                            f"Your push was rejected because an LFS pointer pointed to a file "
                            f"that does not exist: {path}",
                        )
                    tree[path] = Entry(data, lfs=True)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"File not found: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [n for n in tree if n.startswith(prefix)]:
                        del tree[name]
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            author = caller.user if caller else USER
            sha = self.hub._new_commit(
                repo, base, tree, header.get("summary", ""), header.get("description", ""), author
            )
            pr_url = None
            if create_pr:
                branch = revision.removeprefix("refs/heads/")
                pr = self.hub._open_pull_request(
                    repo, header.get("summary", ""), header.get("description", ""), branch, author
                )
                pr_url = f"{self.hub.endpoint}/{repo_id}/discussions/{pr.num}"
            elif revision.startswith("refs/pr/"):
                pr = repo.pull_requests[int(revision[8:])]
            else:
                repo.branches[revision.removeprefix("refs/heads/")] = sha
            if create_pr or revision.startswith("refs/pr/"):
                pr.head = sha
                pr.events.append(
                    self.hub._event("commit", author, subject=header.get("summary", ""), oid=sha)
                )
        self._json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}",
                "pullRequestUrl": pr_url,
            }
        )

    def _commits(self, *, repo_id: str, params: dict, token: str | None, **_: Any) -> None:
        """A revision's history, newest first (one page: no Link header)."""
        repo = self._readable(repo_id, token)
        sha = repo.resolve(params["revision"])
        if sha is None:
            raise HubError(404, f"Invalid rev id: {params['revision']}", "RevisionNotFound")
        history = []
        while sha is not None:
            commit = repo.commits[sha]
            history.append(
                {
                    "id": sha,
                    "title": commit.title,
                    "message": commit.description,
                    "authors": [{"user": commit.author}],
                    "date": _iso_now(),
                }
            )
            sha = commit.parent
        self._json(history)

    def _lfs_files(self, *, repo_id: str, token: str | None, **_: Any) -> None:
        """The repo's LFS objects, each once, from every commit (one page: no Link header)."""
        repo = self._writable(repo_id, token)
        found: dict[str, dict[str, Any]] = {}
        for commit in repo.commits.values():
            for path, entry in commit.files.items():
                if entry.lfs:
                    found.setdefault(
                        entry.sha256,
                        {
                            "fileOid": entry.sha256,
                            "oid": entry.blob_id,
                            "filename": path,
                            "size": entry.size,
                            "pushedAt": _iso_now(),
                        },
                    )
        self._json(list(found.values()))

    def _lfs_files_delete(self, *, repo_id: str, body: bytes, token: str | None, **_: Any) -> None:
        """Permanently delete LFS objects: every commit of the repo loses the files holding them (history
        rewritten), and the bytes go unless another repo still holds them."""
        repo = self._writable(repo_id, token)
        deletions = json.loads(body)["deletions"]
        if not deletions.get("rewriteHistory", True):
            raise HubError(400, "the test Hub only deletes LFS files with rewriteHistory")
        gone = set(deletions["sha"])
        with self.hub._lock:
            for commit in repo.commits.values():
                commit.files = {
                    path: entry
                    for path, entry in commit.files.items()
                    if not (entry.lfs and entry.sha256 in gone)
                }
            held = {
                entry.sha256
                for other in self.hub.repos.values()
                for commit in other.commits.values()
                for entry in commit.files.values()
                if entry.lfs
            }
            for oid in gone - held:
                self.hub.lfs_objects.pop(oid, None)
        self._json({"success": True})

    def _lfs_batch(self, *, repo_id: str, body: bytes, token: str | None, **_: Any) -> None:
        self._writable(repo_id, token)
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "only basic LFS uploads are supported")
        objects = []
        for obj in payload["objects"]:
            item: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                item["actions"] = {
                    "upload": {
                        "href": f"{self.hub.endpoint}/lfs-upload/{repo_id}/{obj['oid']}",
                        "header": {},
                    },
                    "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{repo_id}", "header": {}},
                }
            objects.append(item)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_upload(self, *, params: dict, body: bytes, **_: Any) -> None:
        # Like the Hub's presigned storage URLs: the URL is the authorisation, no token is sent.
        if hashlib.sha256(body).hexdigest() != params["oid"]:
            raise HubError(400, "uploaded content does not match its sha256")
        with self.hub._lock:
            self.hub.lfs_objects[params["oid"]] = body
        self._send(200)

    def _lfs_verify(self, *, repo_id: str, body: bytes, token: str | None, **_: Any) -> None:
        self._writable(repo_id, token)
        obj = json.loads(body)
        data = self.hub.lfs_objects.get(obj["oid"])
        if data is None or len(data) != obj["size"]:
            raise HubError(404, f"LFS object {obj['oid']} not found")
        self._json({"success": True})

    def _resolve(self, *, repo_id: str, params: dict, token: str | None, **_: Any) -> None:
        repo = self._readable(repo_id, token)
        sha = self._sha_at(repo, params["revision"])
        entry = repo.commits[sha].files.get(params["path"])
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.blob_id}"',
            "Accept-Ranges": "bytes",
        }
        if not entry.lfs:
            self._send_file(entry.data, headers)
            return
        # Like the Hub: LFS content is served by storage on another origin, the metadata rides on the redirect.
        headers.update(
            {
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
                "Location": f"{self.hub.cdn_endpoint}/cdn/{entry.sha256}",
            }
        )
        self._send(302, b"", headers)

    def _cdn(self, *, params: dict, **_: Any) -> None:
        """The storage behind the redirect: the URL is the authorisation, as with the Hub's signed URLs."""
        data = self.hub.lfs_objects.get(params["oid"])
        if data is None:
            raise HubError(404, "object not found")
        self._send_file(data, {"ETag": f'"{params["oid"]}"', "Accept-Ranges": "bytes"})

    # -- pull requests (the Hub's discussions API; this Hub hosts pull requests only) ------------------------

    def _pull_request_json(self, repo: Repo, pr: PullRequest) -> dict[str, Any]:
        return {
            "num": pr.num,
            "title": pr.title,
            "status": pr.status,
            "author": {"name": pr.author},
            "createdAt": pr.created_at,
            "isPullRequest": True,
            "pinned": False,
            "numComments": sum(e["type"] == "comment" for e in pr.events),
            "repo": {"name": repo.repo_id, "type": "model"},
        }

    def _pull_request(self, repo: Repo, params: dict) -> PullRequest:
        pr = repo.pull_requests.get(int(params["num"]))
        if pr is None:
            raise HubError(404, "Discussion not found")
        return pr

    def _discussions(self, *, repo_id: str, query: dict, token: str | None, **_: Any) -> None:
        """Page ``p`` of the pull requests matching ``type``, ``status`` and ``author``, newest first."""
        repo = self._readable(repo_id, token)
        if query.get("type", "all") not in ("all", "pull_request", "discussion"):
            raise HubError(400, f"invalid type {query['type']!r}")
        status = query.get("status", "all")
        with self.hub._lock:
            matching = [
                self._pull_request_json(repo, pr)
                for pr in sorted(repo.pull_requests.values(), key=lambda pr: -pr.num)
                if query.get("type") != "discussion"
                and status in ("all", pr.status)
                and query.get("author") in (None, pr.author)
            ]
        size = self.hub.discussions_per_page
        start = int(query.get("p", 0)) * size
        self._json({"discussions": matching[start : start + size], "count": len(matching), "start": start})

    def _discussion_details(
        self, *, repo_id: str, params: dict, query: dict, token: str | None, **_: Any
    ) -> None:
        repo = self._readable(repo_id, token)
        with self.hub._lock:
            pr = self._pull_request(repo, params)
            details = self._pull_request_json(repo, pr)
            base_files = repo.commits[repo.branches[pr.base]].files
            head_files = repo.commits[pr.head].files
            changed = sorted(
                name
                for name in base_files.keys() | head_files.keys()
                if base_files.get(name) != head_files.get(name)
            )
            details.update(
                events=list(pr.events),
                changes={"base": f"refs/heads/{pr.base}"},
                filesWithConflicts=[],
            )
        if query.get("diff"):
            details["diff"] = "".join(f"diff --git a/{name} b/{name}\n" for name in changed)
        self._json(details)

    def _create_discussion(self, *, repo_id: str, body: bytes, token: str | None, **_: Any) -> None:
        """Anyone who can read a repo may open a pull request; opened empty, it is a draft (as on the Hub)."""
        repo = self._readable(repo_id, token)
        caller = self._caller(token)
        if caller is None:
            raise HubError(401, "You must be authenticated to open a pull request")
        payload = json.loads(body or b"{}")
        if not payload.get("pullRequest"):
            raise HubError(400, "this test Hub only hosts pull requests, not discussions")
        title = payload.get("title", "").strip()
        if not 3 <= len(title) <= 200:
            raise HubError(400, "title must be 3 to 200 characters long")
        with self.hub._lock:
            pr = self.hub._open_pull_request(repo, title, payload.get("description", ""), "main", caller.user)
            pr.status = "draft"
        self._json(
            {"num": pr.num, "pullRequest": True, "url": f"{self.hub.endpoint}/{repo_id}/discussions/{pr.num}"}
        )

    def _discussion_status(
        self, *, repo_id: str, params: dict, body: bytes, token: str | None, **_: Any
    ) -> None:
        """Its author or a writer of the repo may close or reopen a pull request."""
        repo = self._readable(repo_id, token)
        caller = self._caller(token)
        payload = json.loads(body or b"{}")
        new_status = payload.get("status")
        if new_status not in ("open", "closed"):
            raise HubError(400, "status must be 'open' or 'closed'")
        with self.hub._lock:
            pr = self._pull_request(repo, params)
            if caller is None or caller.user != pr.author:
                self._check_write(repo.namespace, token)
            if pr.status == "merged":
                raise HubError(400, "a merged pull request cannot change status")
            pr.status = new_status
            author = caller.user if caller else USER
            if payload.get("comment"):  # the Hub shows the comment given with a status change as a comment
                pr.events.append(
                    self.hub._event(
                        "comment", author, edited=False, hidden=False, latest={"raw": payload["comment"]}
                    )
                )
            event = self.hub._event("status-change", author, status=new_status)
            pr.events.append(event)
        self._json({"newStatus": event})
