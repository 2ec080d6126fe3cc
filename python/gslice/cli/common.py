"""Pieces shared by the `gslice` commands: error handling, strict option types and
plain-text tables."""

from __future__ import annotations

import functools
import sys

import click

from .. import interrupts
from ..errors import GsliceError, Interrupted, SpecError
from ..spec import parse_int
from ..units import fmt_ranges as compact_ranges  # noqa: F401 (used by the commands)


def friendly_errors(fn):
    """Bad input ends in one line on stderr and exit 2, never a traceback. SIGINT and SIGTERM
    end the command with a line saying what is on disk (see :mod:`gslice.interrupts`; commands
    that write update the note as they go) and exit 128 + the signal number."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with interrupts.trapped("nothing was written"):
                return fn(*args, **kwargs)
        except GsliceError as e:
            # Some errors list several problems (bulk planning): one line each.
            for line in str(e).splitlines() or [""]:
                click.echo(f"error: {line}", err=True)
            sys.exit(e.exit_code)
        except Interrupted as e:
            click.echo(str(e), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # off the main thread, or the program's own handler
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

    return wrapper


class StrictInt(click.ParamType):
    """An integer option in ASCII digits within [low, high] (click's INT also takes '١',
    '２０' and '1_0', as Python's int() does)."""

    name = "integer"

    def __init__(self, low: int = 1, high: int | None = None):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = parse_int(str(value), param.opts[0] if param else "value")
            except SpecError as e:
                self.fail(str(e).split(": ", 1)[-1], param, ctx)
        if n < self.low or (self.high is not None and n > self.high):
            bound = f"from {self.low} to {self.high}" if self.high is not None else f"at least {self.low}"
            self.fail(f"{n} is out of range: it must be {bound}", param, ctx)
        return n


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


def file_listing(files, header: str) -> str:
    """A header line, then one line per file with its size, then the total."""
    from ..units import fmt_bytes

    width = max((len(f["name"]) for f in files), default=0)
    lines = [header] + [f"  {f['name']:<{width}}  {fmt_bytes(f['bytes']):>10}" for f in files]
    total = sum(f["bytes"] for f in files)
    lines.append(f"  {len(files)} files, {fmt_bytes(total)}")
    return "\n".join(lines)


def runtime_lines(compat: dict, failing_only: bool = False) -> list[str]:
    """One line per runtime (``compat``: runtimes.Compatibility.to_dict()), and one more per
    further problem: 'llama.cpp     no, refuses to load it: layer 4 has FFN width ...'."""
    from ..runtimes import EFFECTS

    verdicts = [v for v in compat["verdicts"] if not (failing_only and v["ok"])]
    width = max((len(v["runtime"]) for v in verdicts), default=0)
    lines = []
    for v in verdicts:
        name = v["runtime"]
        if v["ok"]:
            lines.append(f"  {name:<{width}}  yes" + ("" if v["ran"] else " (read in its code, not run)"))
            continue
        for k, p in enumerate(v["problems"]):
            lines.append(f"  {name if k == 0 else '':<{width}}  no, {EFFECTS[p['effect']]}: {p['message']}")
    return lines


def render_runtimes(compat: dict, what: str = "this slice") -> str:
    """The runtimes block of `plan` and `info`."""
    head = f"which runtimes compute {what} correctly: {compat['summary']}"
    return "\n".join([head] + runtime_lines(compat))
