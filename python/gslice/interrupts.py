"""SIGINT and SIGTERM end a write the same way: the engine is cancelled, removes what it
created, and the caller learns exactly what is on disk.

Python turns SIGINT into ``KeyboardInterrupt``, which the engine's poll loop sees and answers
by cancelling; SIGTERM (what ``timeout`` and service managers send) would kill the process on
the spot and leave the staging folder behind. While :func:`trapped` is active, both raise
:class:`~gslice.errors.Interrupted` instead, carrying ``note`` (what the caller says exists at
that moment); the engine wrapper replaces it with what it finds on disk. Only the main thread
can own signal handlers, and handlers the program installed itself are left alone.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import Interrupted

# What asks a process to stop and can be caught, where it exists: SIGINT (Ctrl-C); SIGTERM on
# POSIX; on Windows, where no other process can send a catchable SIGTERM (TerminateProcess ends
# a process outright), the console's other stop key, Ctrl-Break (SIGBREAK).
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")
SIGNALS = tuple(getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name))
_DEFAULTS = (signal.default_int_handler, signal.SIG_DFL)


class Trap:
    """The active handlers' state: ``note`` says what exists if a signal arrives now."""

    def __init__(self, note: str):
        self.note = note
        self.depth = 0
        self.previous: dict[int, object] = {}

    def handler(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        raise Interrupted(f"interrupted ({name}): {self.note}", signum)


_active: Trap | None = None


@contextmanager
def trapped(note: str = "nothing was written") -> Iterator[Trap | None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted. Nested uses share the outer
    trap (and keep its note). Yields the trap, or None off the main thread."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    if _active is not None:
        _active.depth += 1
        try:
            yield _active
        finally:
            _active.depth -= 1
        return
    trap = Trap(note)
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if any(current is d for d in _DEFAULTS):
            trap.previous[sig] = current
            signal.signal(sig, trap.handler)
    _active = trap
    try:
        yield trap
    finally:
        _active = None
        for sig, previous in trap.previous.items():
            signal.signal(sig, previous)


def set_note(note: str) -> None:
    """What exists from now on, should a signal arrive (no effect without an active trap)."""
    if _active is not None:
        _active.note = note
