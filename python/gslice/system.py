"""What differs between operating systems above the engine: whether a process is alive, and
which output paths Windows cannot hold. (The engine's own platform layer is rust/engine/src/io;
the signals that stop a run cleanly, Windows' Ctrl-Break included, are in interrupts.py.)"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from .errors import OutputPathError

WINDOWS = os.name == "nt"

# Windows maps these names, alone or with any extension, to devices (Microsoft's "Naming
# Files, Paths, and Namespaces"); the superscript digits count as digits there.
_DEVICE = re.compile(r"(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|(COM|LPT)[0-9\u00b9\u00b2\u00b3])", re.IGNORECASE)
_FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)}
# MAX_PATH (260) less the terminating NUL, unless long paths are enabled.
WINDOWS_MAX_PATH = 259
# The longest name gslice gives a temporary folder beside an output: ".{name}" plus this
# (process id and counter at their widest).
_PARTIAL_SUFFIX = len(".gslice-partial-4294967295-99999")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user); True when that cannot
    be told, so that its files are left alone."""
    if WINDOWS:
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: an existence check on POSIX (on Windows it would be Ctrl-C)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's: PermissionError) or we cannot tell
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    process_query_limited_information, error_access_denied, still_active = 0x1000, 5, 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == error_access_denied  # exists, but not ours to query
    try:
        code = wintypes.DWORD()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def windows_name_problem(name: str) -> str | None:
    """Why Windows cannot hold a file or folder of this name, or None."""
    bad = sorted({c for c in name if c in _FORBIDDEN})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad)
    if name != name.rstrip(" ."):
        return "it ends with a dot or a space, which Windows drops, so it would name another folder"
    device = name.split(".")[0].rstrip(" ")
    if _DEVICE.fullmatch(device):
        return f"{device.upper()} is a reserved device name"
    return None


def check_output_path(out: Path, files: Iterable[str]) -> None:
    """On Windows, refuses an output folder that Windows cannot hold: a reserved name, or one
    Windows would silently alter (a trailing dot or space: ``out.`` is ``out`` there, which may
    be another folder), anywhere in the path; or files whose paths exceed MAX_PATH (unless
    long paths are enabled). Elsewhere it does nothing."""
    if not WINDOWS:
        return
    out = Path(out)
    for part in (p for p in out.parts if p != out.anchor):
        why = windows_name_problem(part)
        if why:
            raise OutputPathError(f"output path {out}: {part!r} is not a valid name on Windows ({why})")
    longest = max((len(f) for f in files), default=0)
    # the output's own files, and the same files in its temporary folder beside it
    length = max(len(str(out)), len(str(out.parent)) + 1 + len(out.name) + 1 + _PARTIAL_SUFFIX) + 1 + longest
    if length > WINDOWS_MAX_PATH and not long_paths_enabled():
        raise OutputPathError(
            f"output path {out}: its files' paths reach {length} characters, over Windows' limit of "
            f"{WINDOWS_MAX_PATH} (choose a shorter output path, or enable long paths: LongPathsEnabled)"
        )


def long_paths_enabled() -> bool:
    """Windows' LongPathsEnabled setting (Python's own executable is long-path aware)."""
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1
    except (ImportError, OSError):
        return False
