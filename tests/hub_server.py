"""A Hugging Face Hub on 127.0.0.1 for tests: the endpoints huggingface_hub calls to resolve a
revision, list a repo, describe and download a file, and read byte ranges, on two origins like
the real service (the Hub, and a CDN that the Hub redirects LFS files to with signed URLs).

Hub origin (HF_ENDPOINT):
    GET  /api/models/{repo}/revision/{rev}        repo info: the commit sha, siblings
    GET  /api/models/{repo}/tree/{rev}            the file listing (sizes, LFS sha256)
    HEAD/GET /{repo}/resolve/{rev}/{file}         git files: served here (ETag = git blob id);
                                                  LFS files: 302 to the CDN, with X-Linked-Size,
                                                  X-Linked-Etag (sha256) and X-Repo-Commit
CDN origin:
    HEAD/GET /cdn/{sha256}?sig=...                the bytes, with single Range support (206)

A private repo wants ``Authorization: Bearer <token>`` on the Hub origin; the CDN must never
see an authorization header (``leaks`` records any). Every body byte sent is counted per
file and logged per request, so tests can compare what was served with what was planned.
Knobs: ``ignore_range`` (answer 200 with the whole file), ``rate`` (bytes/s of CDN bodies),
``cut_after`` (close the connection after that many body bytes of each CDN answer),
``before_data`` (called before a CDN body is sent), ``signature`` (the CDN refuses URLs
signed differently, as an expired signed URL).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Repo:
    files: dict[str, Path]  # name in the repo -> file on disk (read at each request)
    commit: str
    refs: dict[str, str]
    token: str | None = None  # required on the Hub origin when set
    gated: bool = False

    def is_lfs(self, name: str) -> bool:
        return name.endswith(".safetensors")


@dataclass
class Served:
    origin: str  # "hub" or "cdn"
    method: str
    path: str
    file: str | None
    range: tuple[int, int] | None  # inclusive first, exclusive end, as asked
    status: int
    sent: int  # body bytes written to the socket


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    ignore_range: bool = False
    rate: float | None = None
    cut_after: int | None = None
    before_data: object = None
    signature: str = "ok"
    log: list[Served] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    streamed: int = 0  # CDN body bytes written so far, answers still running included
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(self, repo_id: str, folder: Path, commit: str, refs: dict[str, str] | None = None, **kw) -> Repo:
        files = {p.name: p for p in sorted(Path(folder).iterdir()) if p.is_file()}
        repo = Repo(files, commit, refs or {"main": commit}, **kw)
        self.repos[repo_id] = repo
        return repo

    # -- what was served ----------------------------------------------------------------

    def served(self, suffix: str = ".safetensors", origin: str = "cdn") -> int:
        """Bytes of file content sent (error pages not counted)."""
        with self.lock:
            return sum(s.sent for s in self.log if s.origin == origin and s.file and s.file.endswith(suffix)
                       and s.method == "GET" and s.status < 300)

    def streaming(self) -> int:
        """CDN body bytes written so far, counted as they go out (``served`` counts finished
        answers only)."""
        with self.lock:
            return self.streamed

    def requests(self, origin: str = "cdn", method: str = "GET") -> list[Served]:
        with self.lock:
            return [s for s in self.log if s.origin == origin and s.method == method]

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    # -- running --------------------------------------------------------------------------

    def __enter__(self) -> "FakeHub":
        self._servers = [self._server("hub"), self._server("cdn")]
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self._servers]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def _server(self, origin: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub, Handler.origin = hub, origin
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    hub: FakeHub
    origin: str

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    # -- routing --------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if self.origin == "cdn":
            return self._cdn(method, path, parse_qs(url.query))
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path):
            return self._api(method, m.group(1), m.group(2), "info")
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path):
            return self._api(method, m.group(1), m.group(2), "tree")
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self._resolve(method, m.group(1), m.group(2), m.group(3))
        self._error(method, path, 404, "EntryNotFound")

    def _repo(self, method: str, repo_id: str, rev: str) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.token and self.headers.get("authorization") != f"Bearer {repo.token}" and not repo.gated):
            self._error(method, self.path, 401, "RepoNotFound")
            return None
        if repo.gated and self.headers.get("authorization") != f"Bearer {repo.token}":
            self._error(method, self.path, 403, "GatedRepo")
            return None
        commit = rev if rev == repo.commit else repo.refs.get(rev)
        if commit is None:
            self._error(method, self.path, 404, "RevisionNotFound")
            return None
        return repo, commit

    def _api(self, method: str, repo_id: str, rev: str, what: str) -> None:
        found = self._repo(method, repo_id, rev)
        if found is None:
            return
        repo, commit = found
        if what == "info":
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": bool(repo.token),
                    "siblings": [{"rfilename": n} for n in repo.files]}
        else:
            body = []
            for name, p in repo.files.items():
                data = _read(p)
                entry = {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                if repo.is_lfs(name):
                    entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
                body.append(entry)
        self._send(method, 200, {"Content-Type": "application/json"}, json.dumps(body).encode(), None)

    def _resolve(self, method: str, repo_id: str, rev: str, name: str) -> None:
        found = self._repo(method, repo_id, rev)
        if found is None:
            return
        repo, commit = found
        if name not in repo.files:
            return self._error(method, self.path, 404, "EntryNotFound", {"X-Repo-Commit": commit})
        data = _read(repo.files[name])
        head = {"X-Repo-Commit": commit}
        if repo.is_lfs(name):
            digest = _sha256(data)
            location = f"{self.hub.cdn}/cdn/{digest}?sig={self.hub.signature}"
            head.update({"Location": location, "X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{digest}"',
                         "ETag": f'"{_git_oid(data)}"'})
            return self._send(method, 302, head, b"", name)
        head["ETag"] = f'"{_git_oid(data)}"'
        self._body(method, head, data, name)

    def _cdn(self, method: str, path: str, query: dict) -> None:
        if self.headers.get("authorization"):
            with self.hub.lock:
                self.hub.leaks.append(path)
        m = re.match(r"^/cdn/([0-9a-f]{64})$", path)
        hit = None
        if m:
            for repo in self.hub.repos.values():
                for name, p in repo.files.items():
                    data = _read(p)
                    if _sha256(data) == m.group(1):
                        hit = (name, data)
        if hit is None:
            return self._error(method, path, 404, None)
        if query.get("sig") != [self.hub.signature]:
            return self._send(method, 403, {"Content-Type": "text/plain"}, b"Request has expired", hit[0])
        self._body(method, {"ETag": f'"{m.group(1)[:32]}"'}, hit[1], hit[0], cdn=True)

    # -- answers --------------------------------------------------------------------------

    def _body(self, method: str, head: dict, data: bytes, name: str, cdn: bool = False) -> None:
        head = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **head}
        rng = self.headers.get("Range")
        if rng and not self.hub.ignore_range:
            m = _RANGE.match(rng)
            if not m:
                return self._send(method, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", name)
            first, last = int(m.group(1)), int(m.group(2)) if m.group(2) else len(data) - 1
            if first >= len(data):
                return self._send(method, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", name)
            last = min(last, len(data) - 1)
            head["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return self._send(method, 206, head, data[first : last + 1], name, (first, last + 1), cdn)
        self._send(method, 200, head, data, name, None, cdn)

    def _error(self, method: str, path: str, status: int, code: str | None, head: dict | None = None) -> None:
        head = dict(head or {})
        if code:
            head["X-Error-Code"] = code
        self._send(method, status, head, f"{status} {code}".encode(), None)

    def _send(self, method, status, head, body, name, rng=None, cdn=False) -> None:
        self.send_response(status)
        for k, v in head.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # Logged before the body goes out and counted as it goes, so that a client that has
        # read everything never sees a count that lags behind.
        entry = Served(self.origin, method, self.path, name, rng, status, 0)
        with self.hub.lock:
            self.hub.log.append(entry)
        if method == "GET" and body:
            if cdn and callable(self.hub.before_data):
                self.hub.before_data()
            self._stream(body, cdn, entry)

    def _stream(self, body: bytes, cdn: bool, entry: Served) -> None:
        step = 16 << 10
        limit = self.hub.cut_after if cdn and self.hub.cut_after is not None else None
        started = time.perf_counter()
        while entry.sent < len(body):
            n = min(step, len(body) - entry.sent)
            cut = limit is not None and entry.sent + n > limit
            if cut:
                n = limit - entry.sent
            try:
                self.wfile.write(body[entry.sent : entry.sent + n])
                if cut:
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            with self.hub.lock:
                entry.sent += n
                if cdn:
                    self.hub.streamed += n
            if cut:
                self.close_connection = True
                self.connection.shutdown(2)  # the connection breaks mid-body
                return
            if cdn and self.hub.rate:
                ahead = entry.sent / self.hub.rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)


def _read(path: Path) -> bytes:
    st = path.stat()
    return _content(path, st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=64)
def _content(path: Path, *stamp) -> bytes:  # read again when the file changes
    return path.read_bytes()


@functools.lru_cache(maxsize=64)
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
