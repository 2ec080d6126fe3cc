"""Pieces shared by the `gslice` commands: error handling and plain-text tables."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import GsliceError


def friendly_errors(fn):
    """Bad input ends in one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GsliceError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was left behind", err=True)
            sys.exit(130)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

    return wrapper


def table(rows) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_lengths(values) -> str:
    """[8192, 8192, 16384] -> '8192 x 2, 16384'."""
    out, prev, n = [], None, 0
    for v in list(values) + [None]:
        if v == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev} x {n}" if n > 1 else str(prev))
        prev, n = v, 1
    return ", ".join(out)


def compact_ranges(xs) -> str:
    """[20, 21, 22, 30] -> '20-22,30'."""
    xs = sorted(xs)
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"{xs[i]}-{xs[j]}" if j > i else str(xs[i]))
        i = j + 1
    return ",".join(parts)
