"""Local HTTP servers on 127.0.0.1 for tests and benchmarks of :mod:`moeplace.remote`: real sockets, real HTTP.

* :class:`FileServer` serves a folder with single-range ``Range`` requests (206 + Content-Range + ETag), and can
  misbehave on purpose: ignore ranges, answer a status, cut answers short, change its etag, answer slowly.
* :class:`HubServer` is the part of the Hugging Face Hub API that ``huggingface_hub`` calls for listing and
  resolving files, reached through ``HF_ENDPOINT``: ``GET /api/models/<repo>/tree/<rev>`` (the tree listing,
  with LFS ids), ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` (302 to a "CDN" on another host name,
  ``localhost``, with ``X-Linked-Etag``, ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub answers for LFS
  files), ``X-Error-Code`` on errors (RepoNotFound, EntryNotFound, GatedRepo) and gated repositories that need
  ``Authorization: Bearer <token>``.

Both count the body bytes they send, so a test can assert what reading a header cost. The Hub's LFS id is a
file's sha256; hashing a 400 GB sparse factory file is pointless, so this server's id is the sha256 of the
repository, path and size, which is just as stable and unique here.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    """Ways a server can misbehave; all off by default."""

    no_range: bool = False  # answer 200 with the whole file to a range request
    status: int = 0  # answer every file request with this status
    truncate: bool = False  # send half of each answer, then close the connection
    change_etag_after: int = 0  # from this many file answers on, the etag is different
    delay: float = 0.0  # seconds to wait before each answer
    fail_first: int = 0  # answer the first this many file requests with 503 (a server having a bad moment)


@dataclass
class _State:
    root: Path
    faults: Faults = field(default_factory=Faults)
    bytes_served: int = 0
    requests: int = 0
    answers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    authorizations: list[str] = field(default_factory=list)  # Authorization headers of file (CDN) requests
    repos: dict[str, Path] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token that may read it
    port: int = 0
    fail_count: int = 0


class _Handler(BaseHTTPRequestHandler):
    server_version = "moeplace-test/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass

    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined,no-any-return]

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        with self.state.lock:
            self.state.requests += 1
        if self.state.faults.delay:
            time.sleep(self.state.faults.delay)
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if self.state.repos:
            self._hub(path, head)
        else:
            self._file(self.state.root / path.lstrip("/"), head, etag_seed=path)

    # -- plain files -------------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            with self.state.lock:
                self.state.bytes_served += len(body)

    def _file(self, file: Path, head: bool, etag_seed: str) -> None:
        f = self.state.faults
        with self.state.lock:
            self.state.authorizations.append(self.headers.get("Authorization", ""))
            failing = self.state.fail_count < f.fail_first
            self.state.fail_count += 1
        if failing:
            self._send(503, b"busy\n", head=head)
            return
        if f.status:
            self._send(f.status, b"refused\n", head=head)
            return
        if not file.is_file():
            self._send(404, b"not found\n", head=head)
            return
        size = file.stat().st_size
        with self.state.lock:
            self.state.answers += 1
            generation = int(bool(f.change_etag_after) and self.state.answers > f.change_etag_after)
        etag = '"' + hashlib.sha256(f"{etag_seed}:{size}:{generation}".encode()).hexdigest()[:32] + '"'
        m = _RANGE.match(self.headers.get("Range", ""))
        if m is None or f.no_range:
            start, end, code = 0, size - 1, 200
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                self._send(416, headers={"Content-Range": f"bytes */{size}"}, head=head)
                return
            code = 206
        length = end - start + 1
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "none" if f.no_range else "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        send = length // 2 if f.truncate else length
        # A whole 40 GB sparse file is never what a test wants: a client that sees 200 hangs up, so stop early.
        send = min(send, 8 << 20) if code == 200 else send
        with open(file, "rb") as fh:
            fh.seek(start)
            left = send
            try:
                while left > 0:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    with self.state.lock:
                        self.state.bytes_served += len(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        if send < length:
            self.close_connection = True

    # -- the Hub -----------------------------------------------------------------------------------------
    def _error(self, code: int, error_code: str, message: str, head: bool) -> None:
        self._send(code, json.dumps({"error": message}).encode(),
                   {"X-Error-Code": error_code, "X-Error-Message": message, "Content-Type": "application/json"},
                   head=head)

    def _authorised(self, repo: str) -> bool:
        token = self.state.gated.get(repo)
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def _hub(self, path: str, head: bool) -> None:
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if m:
            self._tree(m.group(1), m.group(3) or "", head)
            return
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            self._resolve(m.group(1), m.group(3), head)
            return
        m = re.match(r"^/_cdn/([^/]+/[^/]+)/(.+)$", path)
        if m and m.group(1) in self.state.repos:
            self._file(self.state.repos[m.group(1)] / m.group(2), head, etag_seed=path)
            return
        self._error(404, "RepoNotFound", "Repository not found", head)

    def _repo_dir(self, repo: str, head: bool) -> Path | None:
        if repo not in self.state.repos:
            self._error(404 if "Authorization" in self.headers else 401, "RepoNotFound", "Repository not found", head)
            return None
        if not self._authorised(repo):
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted: you must have access to it and "
                        "be authenticated", head)
            return None
        return self.state.repos[repo]

    def _tree(self, repo: str, sub: str, head: bool) -> None:
        root = self._repo_dir(repo, head)
        if root is None:
            return
        entries: list[dict[str, Any]] = []
        for p in sorted((root / sub).rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel})
                continue
            size = p.stat().st_size
            entry: dict[str, Any] = {"type": "file", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": size,
                                     "path": rel}
            if rel.endswith(".gguf"):
                entry["lfs"] = {"oid": lfs_id(repo, rel, size), "size": size, "pointerSize": 134}
            entries.append(entry)
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head=head)

    def _resolve(self, repo: str, rel: str, head: bool) -> None:
        root = self._repo_dir(repo, head)
        if root is None:
            return
        file = root / rel
        if not file.is_file():
            self._error(404, "EntryNotFound", f"{rel} does not exist on main", head)
            return
        size = file.stat().st_size
        sha = lfs_id(repo, rel, size)
        cdn = f"http://localhost:{self.state.port}/_cdn/{repo}/{urllib.parse.quote(rel)}"
        self._send(302, headers={"Location": cdn, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size),
                                 "X-Repo-Commit": COMMIT, "ETag": f'"{sha[:40]}"'}, head=head)


def lfs_id(repo: str, path: str, size: int) -> str:
    """This server's stand-in for a file's sha256 (see the module doc)."""
    return hashlib.sha256(f"{repo}/{path}:{size}".encode()).hexdigest()


class _Server:
    def __init__(self, state: _State) -> None:
        self.state = state
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = state  # type: ignore[attr-defined]
        state.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.state.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bytes_served(self) -> int:
        return self.state.bytes_served

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.state.faults = value

    def reset_counts(self) -> None:
        with self.state.lock:
            self.state.bytes_served = self.state.requests = self.state.answers = 0

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(_Server):
    """Serves the files under ``root`` at ``http://127.0.0.1:<port>/<relative path>``."""

    def __init__(self, root: Path, faults: Faults | None = None) -> None:
        super().__init__(_State(root=Path(root), faults=faults or Faults()))


class HubServer(_Server):
    """A Hub endpoint for ``repos`` (``owner/name`` -> folder); ``gated`` maps a repo to the token it needs."""

    def __init__(self, repos: dict[str, Path], gated: dict[str, str] | None = None,
                 faults: Faults | None = None) -> None:
        super().__init__(_State(root=Path("/nonexistent"), repos={k: Path(v) for k, v in repos.items()},
                                gated=dict(gated or {}), faults=faults or Faults()))
