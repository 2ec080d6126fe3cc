"""A Hub source opened without downloading its weights: the small files (config, index,
tokenizer) come into the standard Hugging Face cache as before, and each shard that the HF
cache does not hold completely becomes a sparse file in the range cache holding only its
safetensors header. The engine can then inspect and plan the checkpoint; :mod:`gslice.download`
fetches the data ranges a plan reads before it runs.

Every run re-checks each shard's size and ETag on the Hub (a HEAD, no body) against what the
range cache recorded for the same commit: bytes of two different files never mix.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import gemma3n, hub, hub_ranges, range_cache
from .errors import HubError, SourceError
from .hub_ranges import ConnectionLost, RemoteShard, SourceChanged
from .range_cache import ShardMeta, SparseShard

# Everything slicing reads except the weights.
SMALL_PATTERNS = tuple(p for p in gemma3n.HUB_PATTERNS if not p.endswith(".safetensors"))
MAX_HEADER_LEN = 100 << 20  # the engine's limit (header.rs)
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass
class ShardSource:
    name: str
    hf_cache: Path | None = None  # the complete shard in the HF cache, when there is one
    sparse: SparseShard | None = None
    meta: ShardMeta | None = None
    remote: RemoteShard | None = None  # None offline, or when the HF cache has the shard


@dataclass
class RemoteCheckpoint:
    repo_id: str
    commit: str
    folder: Path  # what the engine opens: the index and the shards
    shards: dict[str, ShardSource]
    snapshot: Path  # the HF cache's snapshot: config, index, tokenizer files
    headers_fetched: int = 0  # bytes of headers fetched while opening
    requests: int = 0  # range requests for headers
    downloaded: int = 0  # full mode: bytes of the whole shards downloaded while opening

    def sha256(self, name: str) -> str | None:
        s = self.shards.get(name)
        return s.meta.etag if s and s.meta and hub_ranges.is_sha256(s.meta.etag) else None


def open_remote(repo_id: str, revision: str | None) -> RemoteCheckpoint:
    """Range mode: the small files at the revision's commit, and every shard either complete
    in the HF cache or as a sparse file holding at least its header."""
    snap = hub.download(repo_id, revision, allow_patterns=SMALL_PATTERNS, ignore_patterns=gemma3n.HUB_IGNORE)
    if snap.commit is None:
        raise HubError(f"{repo_id}: the Hugging Face cache folder {snap.path} is not named by a commit hash")
    names = shard_names(snap.path)
    shards = {n: ShardSource(n, hf_cache=snap.path / n if (snap.path / n).is_file() else None) for n in names}
    if all(s.hf_cache for s in shards.values()):  # the HF cache holds every shard: use it as is
        return RemoteCheckpoint(repo_id, snap.commit, snap.path, shards, snap.path)
    folder = range_cache.commit_folder(repo_id, snap.commit)
    rc = RemoteCheckpoint(repo_id, snap.commit, folder, shards, snap.path)
    try:
        with range_cache.locked(folder):
            # The index only: without config.json the folder of sparse shards cannot be
            # mistaken for a model and loaded, holes and all, by another program.
            if (snap.path / INDEX_NAME).is_file():
                range_cache.link(folder, INDEX_NAME, snap.path / INDEX_NAME)
            for s in shards.values():
                if s.hf_cache:
                    range_cache.link(folder, s.name, s.hf_cache)
                else:
                    _open_sparse(rc, s)
    except OSError as e:
        raise range_cache.disk_error(e, folder) from None
    return rc


def open_whole(repo_id: str, revision: str | None) -> RemoteCheckpoint:
    """``--full-download``: every file slicing reads, whole, into the HF cache (huggingface_hub
    checks each file's hash as it downloads it)."""
    small = hub.download(repo_id, revision, allow_patterns=SMALL_PATTERNS, ignore_patterns=gemma3n.HUB_IGNORE)
    names = shard_names(small.path)
    missing = [n for n in names if not (small.path / n).is_file()]
    snap = small
    if missing:
        snap = hub.download(repo_id, small.commit or revision, allow_patterns=gemma3n.HUB_PATTERNS,
                            ignore_patterns=gemma3n.HUB_IGNORE)
    shards = {n: ShardSource(n, hf_cache=snap.path / n) for n in names}
    rc = RemoteCheckpoint(repo_id, small.commit or snap.commit or "", snap.path, shards, snap.path)
    rc.downloaded = sum((snap.path / n).stat().st_size for n in missing if (snap.path / n).is_file())
    return rc


def shard_names(snapshot: Path) -> list[str]:
    index = snapshot / INDEX_NAME
    if not index.is_file():
        return [SINGLE_NAME]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{index} is not a valid safetensors index") from None
    bad = [n for n in names if not isinstance(n, str) or "/" in n or "\\" in n or n in ("", ".", "..")]
    if bad:
        raise SourceError(f"{index} names shard {bad[0]!r}, which is not a plain file name")
    return names


def _open_sparse(rc: RemoteCheckpoint, s: ShardSource) -> None:
    s.sparse = SparseShard(rc.folder, s.name)
    s.meta, _ = s.sparse.load()
    if not hub.offline():
        s.remote = hub_ranges.resolve(rc.repo_id, rc.commit, s.name, hub.endpoint())
        if s.meta is not None:
            check_unchanged(s.meta, s.remote, rc.folder)
    if s.meta is not None:
        return
    if s.remote is None:
        raise HubError(
            f"{rc.repo_id}@{rc.commit[:12]} {s.name} is neither in the Hugging Face cache nor in the range cache "
            f"{rc.folder}, and HF_HUB_OFFLINE is set: run once with network access, or unset HF_HUB_OFFLINE"
        )
    header = fetch_header(s.remote, rc)
    s.meta = ShardMeta(s.name, s.remote.size, s.remote.etag, len(header), range_cache.header_digest(header), time.time_ns())
    s.sparse.create(s.meta, header)


def check_unchanged(meta: ShardMeta, remote: RemoteShard, folder: Path) -> None:
    if (meta.size, meta.etag) != (remote.size, remote.etag):
        raise SourceChanged(
            f"{remote.label} on the Hub is {remote.size:,} bytes with ETag {remote.etag}, but the range cache "
            f"recorded {meta.size:,} bytes with ETag {meta.etag} for the same commit: the file changed under its "
            f"commit; delete {folder} to start over"
        )


def fetch_header(remote: RemoteShard, rc: RemoteCheckpoint) -> bytes:
    """The 8-byte length prefix, then the JSON header: two range requests."""
    if remote.size < 8:
        raise SourceError(f"{remote.label} is {remote.size} bytes, too short for a safetensors file")
    prefix = read_bytes(remote, 0, 8, rc)
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_LEN or 8 + n > remote.size:
        raise SourceError(
            f"{remote.label} is not a safetensors file: its header length {n:,} exceeds "
            f"{'the file' if n <= MAX_HEADER_LEN else 'the 100 MiB limit'}"
        )
    return prefix + read_bytes(remote, 8, 8 + n, rc)


def read_bytes(remote: RemoteShard, begin: int, end: int, rc: RemoteCheckpoint, attempts: int = 3) -> bytes:
    buf = bytearray(end - begin)

    def sink(off: int, data: bytes) -> None:
        buf[off - begin : off - begin + len(data)] = data
        rc.headers_fetched += len(data)

    pos = begin
    for attempt in range(attempts):
        rc.requests += 1
        try:
            hub_ranges.read(remote, pos, end, sink)
            return bytes(buf)
        except ConnectionLost as e:
            pos = e.reached
            if attempt == attempts - 1:
                raise HubError(f"{e} (after {attempts} attempts)") from None
    raise AssertionError("unreachable")
