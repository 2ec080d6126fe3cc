"""A bytes-written progress bar fed by the engine's progress callback. It draws only on an
interactive terminal, and erases itself when the run fails so the error line stands alone."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class ByteProgress:
    def __init__(self, desc: str, enabled: bool = True):
        self._desc, self._enabled = desc, enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total == 0:
            return
        if self._bar is None:  # created once the size is known, so it never shows 0 B
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=self._desc)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "ByteProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._bar is not None:
            self._bar.leave = False
        self.close()
