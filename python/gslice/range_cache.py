"""The range cache: parts of Hub shards on local disk, as sparse files the engine memory-maps
like any local shard.

Layout, keyed by repo, commit and file name::

    <GSLICE_CACHE or ~/.cache/gslice>/hub-ranges/models--<owner>--<name>/<commit>/
        model.safetensors.index.json        a symlink into the HF cache (config.json and the
                                            tokenizer files stay there: without a config, no
                                            program takes this folder for a loadable model)
        model-00001-of-00004.safetensors    a sparse file of the shard's full size (fetched
                                            bytes in place, holes elsewhere), or a symlink to
                                            the shard when the HF cache holds all of it
        .gslice/model-00001-of-00004.safetensors.json     size, ETag, header length and hash
        .gslice/model-00001-of-00004.safetensors.ranges   fetched ranges, one "begin end" a line
        .gslice/lock

A line is appended to ``.ranges`` only after its bytes are on disk (fdatasync), so the log
never claims bytes that a crash lost; a torn last line is ignored. The engine never reads a
hole: the caller checks that the log covers every range a plan reads before running it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .errors import DiskFullError, GsliceError, WriteError
from .ranges import RangeSet

FORMAT = "gslice-range-cache/1"
_LINE = re.compile(rb"^(\d+) (\d+)\n$")


def gslice_cache() -> Path:
    """gslice's cache folder: ``$GSLICE_CACHE``, by default ``$XDG_CACHE_HOME/gslice`` (~/.cache)."""
    base = os.environ.get("GSLICE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "gslice")
    return Path(os.path.expandvars(base)).expanduser()


def cache_root() -> Path:
    """``$GSLICE_CACHE/hub-ranges`` (:func:`gslice_cache`)."""
    return gslice_cache() / "hub-ranges"


def commit_folder(repo_id: str, commit: str) -> Path:
    return cache_root() / f"models--{repo_id.replace('/', '--')}" / commit


@dataclass(frozen=True)
class ShardMeta:
    """What the Hub said about a shard when its header was fetched."""

    name: str
    size: int
    etag: str
    header_len: int  # 8 + the JSON header's length: where tensor data starts
    header_sha256: str
    created_ns: int  # when the header was fetched; kept as the sparse file's mtime
    format: str = FORMAT


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Holds the commit folder's lock: one gslice process at a time creates or fills it."""
    state = folder / ".gslice"
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def link(folder: Path, name: str, target: Path) -> None:
    """Makes ``folder/name`` a symlink to ``target``, replacing what gslice put there before."""
    path = folder / name
    if path.is_symlink() and os.readlink(path) == str(target):
        return
    tmp = folder / f".{name}.gslice-link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, path)
    for stale in _state_files(folder, name):  # a sparse copy of a shard the HF cache now holds
        stale.unlink(missing_ok=True)


def _state_files(folder: Path, name: str) -> list[Path]:
    return [folder / ".gslice" / f"{name}.json", folder / ".gslice" / f"{name}.ranges"]


class SparseShard:
    """One shard's sparse file and its record of fetched ranges."""

    def __init__(self, folder: Path, name: str):
        self.name = name
        self.path = folder / name
        self.meta_path, self.log_path = _state_files(folder, name)
        self._log_lock = threading.Lock()

    def load(self) -> tuple[ShardMeta | None, RangeSet]:
        """The recorded metadata and fetched ranges; (None, empty) when there is no usable
        sparse file (never created, or a run was killed before its header was recorded)."""
        try:
            meta = ShardMeta(**json.loads(self.meta_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None, RangeSet.empty()
        if self.path.is_symlink() or not self.path.is_file() or self.path.stat().st_size != meta.size:
            return None, RangeSet.empty()
        return meta, self._read_log(meta.size)

    def _read_log(self, size: int) -> RangeSet:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return RangeSet.empty()
        pairs = []
        for line in data.splitlines(keepends=True):
            m = _LINE.match(line)
            if not m:  # a torn last line, or damage: what follows is not trusted
                break
            b, e = int(m.group(1)), int(m.group(2))
            if b < e <= size:
                pairs.append((b, e))
        return RangeSet.of(pairs)

    def create(self, meta: ShardMeta, header: bytes) -> None:
        """A fresh sparse file of ``meta.size`` bytes holding the header, and its records."""
        self.path.unlink(missing_ok=True)
        for p in (self.meta_path, self.log_path):
            p.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, meta.size)
            pwrite_all(fd, header, 0)
            flush_data(fd)
        finally:
            os.close(fd)
        _write_atomic(self.meta_path, json.dumps(asdict(meta), indent=1) + "\n")
        self.record(0, len(header))
        self.keep_mtime(meta)

    def record(self, begin: int, end: int) -> None:
        """Appends a range whose bytes the caller has already flushed to disk."""
        with self._log_lock, open(self.log_path, "ab") as f:
            f.write(b"%d %d\n" % (begin, end))
            f.flush()
            os.fsync(f.fileno())

    def keep_mtime(self, meta: ShardMeta) -> None:
        """Filling holes does not change what the file stands for (the Hub's shard), so its
        mtime stays the header's fetch time: manifests that fingerprint it stay valid."""
        os.utime(self.path, ns=(meta.created_ns, meta.created_ns))


def header_digest(header: bytes) -> str:
    return hashlib.sha256(header).hexdigest()


# macOS has no fdatasync; fsync also flushes the data there.
flush_data = getattr(os, "fdatasync", os.fsync)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def disk_error(e: OSError, folder: Path, kept: str = "") -> GsliceError:
    """A one-line error for a failed write into the range cache."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"the range cache {folder} ran out of disk space{kept}: free some space, or set GSLICE_CACHE to a "
            "folder on another disk, and run again"
        )
    return WriteError(f"cannot write the range cache {folder}: {e.strerror or e}{kept}")
