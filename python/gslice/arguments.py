"""Checks of the public API's arguments, so that a wrong type (None, bytes, a float for an
integer, a string for a flag) ends in :class:`~gslice.errors.ArgumentError` naming the
argument, as the CLI would refuse the same value, never a TypeError from deep inside."""

from __future__ import annotations

import operator
import os
from typing import Any, Callable

from .errors import ArgumentError

# Worker threads: the CLI's --threads / --jobs range. More threads than this cannot help on
# any machine gslice targets, and the engine would create every one of them.
MAX_THREADS = 256


def path_arg(value: Any, name: str) -> str | os.PathLike:
    """A filesystem path given as str or os.PathLike (not bytes, not None)."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        if isinstance(os.fspath(value), str):
            return value
    raise ArgumentError(f"{name} must be a path (str or os.PathLike), not {_shown(value)}")


def optional_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ArgumentError(f"{name} must be a string or None, not {_shown(value)}")


def bool_arg(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ArgumentError(f"{name} must be True or False, not {_shown(value)}")


def int_arg(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """An integer (bool and float refused) within [low, high]."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ArgumentError(f"{name} must be an integer, not {_shown(value)}")
    n = operator.index(value)
    if n < low or (high is not None and n > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ArgumentError(f"{name} = {n} is out of range: it must be {bound}")
    return n


def optional_int(value: Any, name: str, low: int = 1, high: int | None = None) -> int | None:
    return None if value is None else int_arg(value, name, low, high)


def threads_arg(value: Any, name: str = "threads") -> int | None:
    """None (every core) or 1..MAX_THREADS, as the CLI's --threads."""
    return optional_int(value, name, 1, MAX_THREADS)


def callback_arg(value: Any, name: str) -> Callable | None:
    if value is None or callable(value):
        return value
    raise ArgumentError(f"{name} must be a callable or None, not {_shown(value)}")


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}" if value is not None else "None"
