"""Who wrote this? gslice replaces only what gslice wrote (docs/design.md, "Who wrote this?").

Every writer (slice, bulk, demo, the preset plot) asks :func:`check_output` before planning
its first write. An output path may be replaced, when replacing was asked for, only if it is

* a folder holding ``gslice-manifest.json`` (format ``gslice-manifest/1``) and no file the
  manifest does not list (an empty folder holds nothing to lose and is accepted too), or
* a file that a registered file format recognises as gslice's (a GGUF whose metadata holds
  ``gslice.manifest``: see :func:`register_file_format`).

A single-file output has companions: files gslice keeps next to it, named after it (its
evaluation results, ``<file>.gslice-eval.json``: see :func:`register_companion`). They go with
the file: a companion that exists needs replacing to be asked for, one gslice did not write is
refused, and once a new file is in place the companions of the file it replaced are removed
(:func:`companions_follow`).

Never the source or anything inside it, never the current directory or one of its parents
(``-o ""`` and ``-o .`` included), never a special file, and never a symbolic link that
resolves to any of those. A link to a gslice output replaces the folder it points to. The
engine checks the folder rule again, before the run and right before the finished output
takes the old one's place.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import GsliceError, OutputExistsError, ProtectedPathError
from .manifest import MANIFEST_NAME, read_manifest, unlisted_files

# name -> whether a regular file is one gslice wrote in that format
_FILE_FORMATS: dict[str, Callable[[Path], bool]] = {}
# suffix appended to a single-file output's name -> (what it holds, whether a file is gslice's)
_COMPANIONS: dict[str, tuple[str, Callable[[Path], bool]]] = {}


def register_file_format(name: str, recognizer: Callable[[Path], bool]) -> None:
    """Lets a single-file output format say which files it wrote (it must only read)."""
    _FILE_FORMATS[name] = recognizer


def register_companion(suffix: str, holds: str, recognizer: Callable[[Path], bool]) -> None:
    """Declares a file gslice keeps next to a single-file output, at ``<output name><suffix>``;
    ``recognizer`` says whether a regular file there is gslice's (it must only read)."""
    _COMPANIONS[suffix] = (holds, recognizer)


def companions(path: str | os.PathLike) -> list[Path]:
    """Where the companions of the single-file output ``path`` are (existing or not)."""
    p = Path(path)
    return [p.with_name(p.name + suffix) for suffix in _COMPANIONS]


@contextlib.contextmanager
def companions_follow(files: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Around a write of single-file outputs: the companions gslice kept next to each file that
    the write replaced (or put where nothing was) are removed afterwards, since they described
    what was there before - also when the write stops early (the outputs finished before it
    stopped were replaced). A companion gslice did not write was refused by :func:`check_output`
    and is never touched. Nothing here fails a finished write: a companion that cannot be
    removed stays, recognisably stale (``gslice verify`` reports it)."""
    before = {Path(f): _identity(Path(f)) for f in files}
    try:
        yield
    finally:
        for f, was in before.items():
            now = _identity(f)
            if now is not None and now != was:
                _clear_companions(f)


def _clear_companions(path: Path) -> None:
    for c, (_, recognize) in zip(companions(path), _COMPANIONS.values()):
        st = _lstat(c)
        if st is not None and stat.S_ISREG(st.st_mode) and recognize(c):
            with contextlib.suppress(OSError):
                c.unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    st = _lstat(path)
    return None if st is None else (st.st_dev, st.st_ino)


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
        _check_companions(path, overwrite, what)
        return path
    if not overwrite:
        raise OutputExistsError(f"{what} {path} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)")
    if stat.S_ISLNK(st.st_mode):
        target = _lstat(real)
        if target is None or stat.S_ISLNK(target.st_mode):
            raise refuse(f"is a symbolic link to {real}, which does not exist")
        _check_owned(real, target, _refusal(f"{what} {path} is a symbolic link to {real}, which"))
        if not stat.S_ISDIR(target.st_mode):
            _check_companions(real, overwrite, what)
        return real
    _check_owned(path, st, refuse)
    if not stat.S_ISDIR(st.st_mode):
        _check_companions(path, overwrite, what)
    return path


def _refusal(subject: str) -> Callable[[str], ProtectedPathError]:
    return lambda why: ProtectedPathError(f"{subject} {why}; refusing to replace it")


def _check_companions(path: Path, overwrite: bool, what: str) -> None:
    """The companions of a single-file output at ``path`` (a file, or nothing yet: whatever is
    written there may be a single file) go with it."""
    for suffix, (holds, recognize) in _COMPANIONS.items():
        c = path.with_name(path.name + suffix)
        st = _lstat(c)
        if st is None:
            continue
        if not (stat.S_ISREG(st.st_mode) and recognize(c)):
            raise ProtectedPathError(f"{what} {path}: {c} is where gslice keeps {holds}, and it holds a "
                                     f"{'file' if stat.S_ISREG(st.st_mode) else 'path'} gslice did not write; refusing to replace it")
        if not overwrite:
            raise OutputExistsError(f"{what} {path}: {c} ({holds}) already exists "
                                    "(pass overwrite=True / --overwrite to replace a previous gslice output)")


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
