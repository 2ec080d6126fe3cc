"""Who wrote this? gslice replaces only what gslice wrote (docs/design.md, "Who wrote this?").

Every writer (slice, bulk, demo, the preset plot) asks :func:`check_output` before planning
its first write. An output path may be replaced, when replacing was asked for, only if it is

* a folder holding ``gslice-manifest.json`` (format ``gslice-manifest/1``) and no file the
  manifest does not list (an empty folder holds nothing to lose and is accepted too), or
* a file that a registered file format recognises as gslice's (a GGUF whose metadata holds
  ``gslice.manifest``, once that format exists: see :func:`register_file_format`).

Never the source or anything inside it, never the current directory or one of its parents
(``-o ""`` and ``-o .`` included), never a special file, and never a symbolic link that
resolves to any of those. A link to a gslice output replaces the folder it points to. The
engine checks the folder rule again, before the run and right before the finished output
takes the old one's place.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from .errors import GsliceError, OutputExistsError, ProtectedPathError
from .manifest import MANIFEST_NAME, read_manifest, unlisted_files

# name -> whether a regular file is one gslice wrote in that format
_FILE_FORMATS: dict[str, Callable[[Path], bool]] = {}


def register_file_format(name: str, recognizer: Callable[[Path], bool]) -> None:
    """Lets a single-file output format say which files it wrote (it must only read)."""
    _FILE_FORMATS[name] = recognizer


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    source: str | os.PathLike | None = None,
    protected: Iterable[str | os.PathLike] = (),
    what: str = "output path",
) -> Path:
    """The absolute path to write ``out`` to, or ProtectedPathError / OutputExistsError.
    ``source`` is the checkpoint folder read (with ``protected``, other files it reads)."""
    text = os.fspath(out)
    if text == "":
        raise ProtectedPathError(f"{what} '' is empty, which names the current directory; refusing to write there")
    path = Path(os.path.abspath(Path(text).expanduser()))
    refuse = _refusal(f"{what} {path}")
    real = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if cwd == real or real in cwd.parents:
        raise refuse("is the current directory or one of its parents")
    if source is not None:
        _check_source(path, real, Path(source), protected, refuse)
    st = _lstat(path)
    if st is None:
        return path
    if not overwrite:
        raise OutputExistsError(f"{what} {path} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)")
    if stat.S_ISLNK(st.st_mode):
        target = _lstat(real)
        if target is None or stat.S_ISLNK(target.st_mode):
            raise refuse(f"is a symbolic link to {real}, which does not exist")
        _check_owned(real, target, _refusal(f"{what} {path} is a symbolic link to {real}, which"))
        return real
    _check_owned(path, st, refuse)
    return path


def _refusal(subject: str) -> Callable[[str], ProtectedPathError]:
    return lambda why: ProtectedPathError(f"{subject} {why}; refusing to replace it")


def _check_source(path: Path, real: Path, source: Path, protected: Iterable, refuse) -> None:
    src = Path(os.path.realpath(source))
    files = [Path(os.path.realpath(q)) for q in protected]
    if real == src or real in src.parents or any(real in f.parents for f in files):
        raise refuse(f"holds the source checkpoint {source}")
    if real in files:
        raise refuse(f"is part of the source checkpoint {source}")
    if src in real.parents and _lstat(path) is not None:
        raise refuse(f"lies inside the source checkpoint {source}")


def _check_owned(path: Path, st: os.stat_result, refuse) -> None:
    if stat.S_ISDIR(st.st_mode):
        _check_folder(path, refuse)
    elif stat.S_ISREG(st.st_mode):
        if not any(recognize(path) for recognize in _FILE_FORMATS.values()):
            raise refuse("is a file gslice did not write")
    else:
        raise refuse("is a special file (a device, FIFO or socket)")


def _check_folder(path: Path, refuse) -> None:
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise refuse(f"cannot be listed ({e.strerror})") from None
    if not entries:
        return
    if MANIFEST_NAME not in entries:
        raise refuse(f"is a folder gslice did not write (it has no {MANIFEST_NAME})")
    try:
        data = read_manifest(path)
    except GsliceError as e:
        raise refuse(f"is a folder gslice did not write ({e})") from None
    foreign = unlisted_files(path, data)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise refuse(f"holds files gslice did not write ({', '.join(foreign[:3])}{more})")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
