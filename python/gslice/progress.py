"""Progress bars: bytes for the engine's work, tokens for evaluation runs. They draw only on an
interactive terminal, and erase themselves when the run fails so the error line stands alone."""

from __future__ import annotations

import sys

from tqdm import tqdm  # the terminal bar; tqdm.auto would probe for notebooks at import


class _Bar:
    _bar: tqdm | None = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._bar is not None:
            self._bar.leave = False
        self.close()


class ByteProgress(_Bar):
    """Fed by the engine's progress callback. One bar may follow several engine calls in a row
    (hashing, then comparing): each call counts from zero, so a call's counts are added to
    those of the calls before it."""

    def __init__(self, desc: str, enabled: bool = True):
        self._desc, self._enabled = desc, enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None
        self._before = (0, 0)  # (done, total) of the finished calls
        self._call = (0, 0)  # the latest counts of the current call

    def __call__(self, done: int, total: int) -> None:
        if done < self._call[0] or total != self._call[1]:  # another call started
            self._before = (self._before[0] + self._call[0], self._before[1] + self._call[1])
        self._call = (done, total)
        done, total = self._before[0] + done, self._before[1] + total
        if not self._enabled or total == 0:
            return
        if self._bar is None:  # created once the size is known, so it never shows 0 B
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=self._desc)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)


class TokenProgress(_Bar):
    """A tokens bar per model run, fed with (label, done, total); a new label starts a new bar."""

    def __init__(self, enabled: bool = True):
        self._enabled = enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None
        self._label: str | None = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        if label != self._label:
            self.close()
            self._bar, self._label = tqdm(total=total, unit="tok", desc=label), label
        self._bar.update(done - self._bar.n)
