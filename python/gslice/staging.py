"""gslice's hidden temporary folders, and the ones a killed run left behind.

The engine writes into ``.gslice-staging-<pid>-<n>`` (shard files) and
``.<name>.gslice-partial-<pid>-<n>`` (an output being assembled) beside the output, and, where
the filesystem cannot exchange two folders atomically, moves a replaced output aside as
``.<name>.gslice-old-<pid>-<n>``. A run removes them whatever way it ends, except when it is
killed outright (SIGKILL, power loss). A later run into the same folder finds those, removes the
ones whose process is gone, and leaves alone those of a process still running.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .system import process_alive

LEFTOVER = re.compile(r"^(?:\.gslice-staging|\..+\.gslice-(?:partial|old))-([0-9]+)-[0-9]+$", re.ASCII)

# Folders this process is writing into right now: its own leftovers there are live.
_writing: Counter[Path] = Counter()
_lock = threading.Lock()


@dataclass(frozen=True)
class Leftover:
    path: Path
    pid: int
    live: bool  # its process is still running (then it is left alone)

    def describe(self, dry_run: bool = False) -> str:
        if self.live:
            return f"left {self.path} alone: process {self.pid} is still writing it"
        verb = "would remove" if dry_run else "removed"
        return f"{verb} {self.path}, left by process {self.pid}, which is no longer running"


def find(parent: Path) -> list[Leftover]:
    """gslice's temporary folders in ``parent`` (not following symbolic links)."""
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        m = LEFTOVER.match(name)
        path = parent / name
        if m and path.is_dir() and not path.is_symlink():
            pid = int(m.group(1))
            out.append(Leftover(path, pid, _live(pid, parent)))
    return out


def clear(parent: Path, dry_run: bool = False) -> list[Leftover]:
    """Removes the stale leftovers of ``parent`` (unless ``dry_run``); returns every leftover
    found, live ones included, for the report."""
    found = find(parent)
    if not dry_run:
        for f in found:
            if not f.live:
                shutil.rmtree(f.path, ignore_errors=True)
    return found


@contextmanager
def writing(parents: Iterable[Path]) -> Iterator[None]:
    """Marks ``parents`` as being written by this process for the duration of the block."""
    parents = [Path(p) for p in set(parents)]
    with _lock:
        _writing.update(parents)
    try:
        yield
    finally:
        with _lock:
            _writing.subtract(parents)


def own(parents: Iterable[Path]) -> list[Path]:
    """This process's temporary folders in ``parents`` (after a run they should be gone)."""
    pid = os.getpid()
    return [f.path for p in set(parents) for f in find(Path(p)) if f.pid == pid]


def _live(pid: int, parent: Path) -> bool:
    if pid == os.getpid():  # a thread of this process may be writing; else an earlier process had our pid
        with _lock:
            return _writing[parent] > 0
    return process_alive(pid) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has ended but not been reaped yet (Linux): it writes nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] in ("Z", "X")
