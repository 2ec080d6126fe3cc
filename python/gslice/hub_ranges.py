"""HTTP range reads of Hub files, through huggingface_hub's own machinery: its URL builder
(``hf_hub_url``, honouring HF_ENDPOINT), its metadata call (``get_hf_file_metadata``: a HEAD on
/resolve that stops at the CDN redirect, as huggingface_hub's downloads do), its headers
(``build_hf_headers``: HF_TOKEN or the stored login, user agent), and its shared HTTP client
with retries (``http_stream_backoff`` over ``get_session()``). Nothing here opens a socket of
its own.

The authorization header goes only to the resolve URL's own origin; a redirect to another host
(the CDN's signed URL) gets none, as in huggingface_hub.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub import utils as hf_utils
from huggingface_hub.errors import OfflineModeIsEnabled

from .errors import HubError
from .hub import _first_line as first_line

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(etag: str) -> bool:
    """The Hub's ETag of an LFS file is the SHA-256 of its content (git files have a SHA-1)."""
    return bool(_SHA256.match(etag))


def _http_module():
    """The HTTP library huggingface_hub's session comes from (httpx, or httpx2 in 2.x)."""
    return importlib.import_module(type(hf_utils.get_session()).__module__.split(".")[0])


def transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the connection failed (refused, reset, timed out, cut short), or
    that huggingface_hub refused to connect (HF_HUB_OFFLINE was set when it was imported)."""
    return (_http_module().TransportError, OfflineModeIsEnabled)


class RangeIgnored(HubError):
    """The server answered a range request with the whole file (status 200)."""


class ConnectionLost(HubError):
    """The response ended, or the connection broke, before the range was complete."""

    def __init__(self, message: str, reached: int):
        super().__init__(message)
        self.reached = reached  # first byte not received


class LocationExpired(HubError):
    """The CDN refused a signed URL (expired): resolve the file again."""


class SourceChanged(HubError):
    """The file on the Hub is not the one the range cache recorded for the same commit."""


@dataclass(frozen=True)
class RemoteShard:
    repo_id: str
    commit: str
    name: str
    url: str  # the /resolve URL
    location: str  # where the bytes are served (the CDN's URL after the Hub's redirect)
    size: int
    etag: str

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]} {self.name}"


def resolve(repo_id: str, commit: str, name: str, endpoint: str) -> RemoteShard:
    """HEAD /resolve of ``name`` at ``commit``: size, ETag and the URL that serves the bytes."""
    url = huggingface_hub.hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
    what = f"{repo_id}@{commit[:12]} {name}"
    try:
        meta = huggingface_hub.get_hf_file_metadata(url, endpoint=endpoint)
    except transport_errors() as e:
        raise HubError(f"cannot reach the Hugging Face Hub for {what}: {first_line(e)}") from None
    except hf_utils.HfHubHTTPError as e:
        raise HubError(f"the Hub refused to describe {what}: {first_line(e)}") from None
    if meta.commit_hash not in (None, commit):
        raise SourceChanged(f"the Hub served {what} from commit {meta.commit_hash}, not the commit asked for")
    if meta.size is None or not meta.etag:
        raise HubError(f"the Hub's answer for {what} lacks its size or ETag; is HF_ENDPOINT a Hub-compatible server?")
    return RemoteShard(repo_id, commit, name, url, meta.location or url, int(meta.size), meta.etag)


def read(
    shard: RemoteShard,
    begin: int,
    end: int,
    sink: Callable[[int, bytes], None],
    stop: threading.Event | None = None,
) -> int:
    """GETs bytes [begin, end) of the shard and hands each chunk to ``sink(offset, data)``.
    Returns the offset reached (``end`` unless ``stop`` was set). Raises RangeIgnored,
    LocationExpired, SourceChanged, ConnectionLost or HubError."""
    headers = hf_utils.build_hf_headers()
    if _origin(shard.location) != _origin(shard.url):
        headers.pop("authorization", None)
    headers["Range"] = f"bytes={begin}-{end - 1}"
    headers["Accept-Encoding"] = "identity"  # a compressed body cannot honour byte offsets
    pos = begin
    broken: BaseException | None = None
    try:
        with hf_utils.http_stream_backoff(
            "GET", shard.location, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            max_retries=2, base_wait_time=0.5, max_wait_time=2,
        ) as r:
            _check_response(shard, r, begin, end)
            # A connection error must not reach http_stream_backoff's generator, which would
            # take it for its own and retry inside the with-block.
            try:
                for chunk in r.iter_bytes():  # as received: a broken connection loses nothing
                    if pos + len(chunk) > end:
                        raise HubError(f"{shard.label}: the server sent more than the {end - begin} bytes asked for")
                    sink(pos, chunk)
                    pos += len(chunk)
                    if stop is not None and stop.is_set():
                        return pos
            except transport_errors() as e:
                broken = e
    except transport_errors() as e:  # opening the connection failed, after the retries
        broken = e
    if broken is not None:
        raise ConnectionLost(f"connection lost while fetching {shard.label}: {first_line(broken)}", pos)
    if pos < end:
        raise ConnectionLost(f"connection lost while fetching {shard.label}: the response ended {end - pos} bytes early", pos)
    return pos


def _check_response(shard: RemoteShard, r, begin: int, end: int) -> None:
    if r.status_code == 200:
        raise RangeIgnored(
            f"{_host(shard.location)} ignored the Range header for {shard.label}: it answered 200 with the whole "
            f"{shard.size:,}-byte file, which gslice did not read; run with --full-download to download whole files"
        )
    if r.status_code in (401, 403, 410) and shard.location != shard.url:
        raise LocationExpired(f"{_host(shard.location)} refused the signed URL of {shard.label} ({r.status_code})")
    if r.status_code == 416:
        raise SourceChanged(
            f"{shard.label}: the server cannot serve bytes {begin}-{end - 1} (416), so the file is no longer "
            f"the {shard.size:,} bytes recorded for this commit"
        )
    try:
        hf_utils.hf_raise_for_status(r)
    except hf_utils.HfHubHTTPError as e:
        raise HubError(f"the Hub refused to serve {shard.label}: {first_line(e)}") from None
    if r.status_code != 206:
        raise HubError(f"{shard.label}: unexpected status {r.status_code} to a range request")
    m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
    if not m:
        raise HubError(f"{shard.label}: the answer to a range request has no valid Content-Range header")
    first, last, total = map(int, m.groups())
    if total != shard.size:
        raise SourceChanged(
            f"{shard.label} is {total:,} bytes on the server now, but {shard.size:,} were recorded for the same "
            "commit: the file changed under its commit"
        )
    if (first, last) != (begin, end - 1):
        raise HubError(f"{shard.label}: asked for bytes {begin}-{end - 1}, the server sent {first}-{last}")


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def _host(url: str) -> str:
    return urlsplit(url).netloc or url
