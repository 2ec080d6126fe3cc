"""A bytes progress bar fed by the engine's progress callback. It draws only on an
interactive terminal, and erases itself when the run fails so the error line stands alone.

One callback may follow several engine calls in a row (verify hashes the files, then compares
the tensors): each call counts from zero towards its own total, which is not known before the
call starts. Adding the calls up would make the total grow and the percentage go backwards,
so each call gets a bar of its own, named by ``phases`` when the caller knows them."""

from __future__ import annotations

import sys
from typing import Sequence

from tqdm import tqdm  # the terminal bar; tqdm.auto would probe for notebooks at import


class ByteProgress:
    def __init__(self, desc: str, enabled: bool = True, phases: Sequence[str] = ()):
        self._desc, self._enabled = desc, enabled and sys.stderr.isatty()
        self._phases = tuple(phases)
        self._phase = 0
        self._bar: tqdm | None = None
        self._last = (0, 0)  # the latest (done, total) of the current call
        self._finished = False  # the current call's bar reached its total and was closed

    def __call__(self, done: int, total: int) -> None:
        last_done, last_total = self._last
        if done < last_done or (total != last_total and last_total != 0):  # another call started
            self._finish_bar()
            self._phase += 1
            self._finished = False
        self._last = (done, total)
        if not self._enabled or total == 0 or self._finished:
            return
        if self._bar is None:  # created once the size is known, so it never shows 0 B
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=self._label())
        self._bar.update(done - self._bar.n)
        if done == total:  # closed at once, so a bar never sits unfinished below the next one
            self._finish_bar()
            self._finished = True

    def _label(self) -> str:
        if self._phase < len(self._phases):
            return f"{self._desc}: {self._phases[self._phase]}"
        return self._desc

    def _finish_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._finish_bar()

    def __enter__(self) -> "ByteProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._bar is not None:
            self._bar.leave = False
        self.close()
