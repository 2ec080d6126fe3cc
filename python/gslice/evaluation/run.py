"""Running one model over the windows, normally in a child process of its own.

A child process per model (a fresh ``python -m gslice.evaluation.worker``) makes "peak RSS" mean that model in that runtime (the child's own
high-water mark: interpreter, runtime libraries, weights paged in, activations), frees all of
it before the next model loads, and turns a runtime that crashes (a segfault in native code)
into one error line instead of a dead gslice. The child receives the windows (and, for a
slice, the source's top-k rows), computes the per-position figures itself - only a few numbers
per position cross back, never V-wide logits - and streams progress in tokens.

tokens/s counts every token of every window (BOS and re-run overlap included) over the time
spent inside the runtime's forward passes; loading and gslice's own arithmetic on the logits
are timed separately.
"""

from __future__ import annotations

import functools
import os
import pickle
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GsliceError, InternalError, SourceError
from . import metrics, runners
from .metrics import SliceRows, SourceRows
from .windows import Window

# Every model run this process started, (runtime, path): the tests count them.
RUNS: list[tuple[str, str]] = []


@dataclass(frozen=True)
class RunStats:
    runtime: str  # with versions, e.g. "llama.cpp (llama-cpp-python 0.3.36)"
    settings: dict
    threads: int | None
    load_seconds: float
    eval_seconds: float  # inside the runtime's forward passes
    metric_seconds: float
    tokens_processed: int
    peak_rss_bytes: int
    isolated: bool  # False: measured inside the calling process (RSS then includes it)
    measured: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_processed / self.eval_seconds if self.eval_seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}

    @staticmethod
    def from_dict(d: dict) -> "RunStats":
        d = {k: v for k, v in d.items() if k != "tokens_per_second"}
        return RunStats(**d)


@dataclass(frozen=True)
class Job:
    runtime: str
    path: str
    context: int
    threads: int | None
    windows: list[Window]
    top_k: int
    reference: SourceRows | None  # None: this is the source run
    vocab_size: int | None  # the source's, which a slice must match


def _compute(job: Job, progress: Callable[[int], None]) -> tuple[SourceRows | SliceRows, int, dict, float, float, float]:
    """(rows, vocabulary size, runner settings, load, forward and metric seconds)."""
    t0 = time.perf_counter()
    runner = runners.module(job.runtime).load(Path(job.path), job.context, job.threads)
    load_s = time.perf_counter() - t0
    try:
        if job.vocab_size is not None and runner.vocab_size != job.vocab_size:
            raise SourceError(
                f"{job.path} has a vocabulary of {runner.vocab_size} tokens, the source {job.vocab_size}: "
                "KL and top-1 agreement need the same vocabulary"
            )
        parts, eval_s, metric_s, done = [], 0.0, 0.0, 0
        for w in job.windows:
            if int(w.tokens.max()) >= runner.vocab_size:
                raise SourceError(f"token id {int(w.tokens.max())} is outside {job.path}'s vocabulary of {runner.vocab_size}")
            e, m = _run_window(runner, job, w, done, parts, progress)
            eval_s, metric_s, done = eval_s + e, metric_s + m, done + len(w.scored_positions)
        if job.reference is None:
            rows = SourceRows.concat(parts, min(job.top_k, runner.vocab_size))
        else:
            rows = SliceRows.concat(parts)
        return rows, runner.vocab_size, getattr(runner, "settings", {}), load_s, eval_s, metric_s
    finally:
        runner.close()


def _run_window(runner, job: Job, w: Window, done: int, parts: list, progress) -> tuple[float, float]:
    """Scores one window into ``parts``; returns (seconds in the runtime, seconds in metrics)."""
    blocks, pos, eval_s, metric_s = runner.window_logits(w.tokens), 0, 0.0, 0.0
    while True:
        t = time.perf_counter()
        block = next(blocks, None)
        eval_s += time.perf_counter() - t
        if block is None:
            return eval_s, metric_s
        t = time.perf_counter()
        parts += _score_block(job, w, pos, block, done)
        metric_s += time.perf_counter() - t
        pos += len(block)
        progress(len(block))


def _score_block(job: Job, w: Window, pos: int, block: np.ndarray, done: int) -> list:
    """Figures for the scored positions among rows [pos, pos + len(block)) of window ``w``;
    ``done`` is the number of positions scored in earlier windows (the index into the reference)."""
    lo, hi = max(pos, w.first_scored), min(pos + len(block), len(w.tokens) - 1)
    if lo >= hi:
        return []
    logits, targets = block[lo - pos : hi - pos], w.tokens[lo + 1 : hi + 1]
    if job.reference is None:
        return [metrics.source_rows(logits, targets, job.top_k)]
    at = done + lo - w.first_scored
    return [metrics.slice_rows(logits, targets, job.reference.slice(at, at + hi - lo))]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def serve() -> None:
    """The child's side (``python -m gslice.evaluation.worker``): a pickled Job on stdin, pickled
    messages on the stdout it started with; anything a library prints goes to stderr instead."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    send = functools.partial(_send, out)
    try:
        job = pickle.load(sys.stdin.buffer)
        pending = 0

        def progress(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= 64:
                send(("progress", pending))
                pending = 0

        result = _compute(job, progress)
        if pending:
            send(("progress", pending))
        send(("done", result, _peak_rss()))
    except GsliceError as e:
        send(("error", type(e).__name__, str(e)))
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent as one line
        send(("crash", f"{type(e).__name__}: {e}", traceback.format_exc()))
    finally:
        out.close()


def _send(out, message) -> None:
    pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def run_model(job: Job, progress: Callable[[int], None] | None = None, isolate: bool = True):
    """(rows, RunStats, vocab size) of one model over the job's windows."""
    RUNS.append((job.runtime, job.path))
    progress = progress or (lambda n: None)
    if isolate:
        result, peak = _run_isolated(job, progress)
    else:
        result, peak = _compute(job, progress), _peak_rss()
    rows, vocab, settings, load_s, eval_s, metric_s = result
    stats = RunStats(
        runtime=runners.version(job.runtime),
        settings=settings,
        threads=job.threads,
        load_seconds=load_s,
        eval_seconds=eval_s,
        metric_seconds=metric_s,
        tokens_processed=sum(len(w.tokens) for w in job.windows),
        peak_rss_bytes=peak,
        isolated=isolate,
    )
    return rows, stats, vocab


def _run_isolated(job: Job, progress: Callable[[int], None]):
    # A fresh interpreter, not multiprocessing: spawn would re-run the caller's __main__ (a
    # script calling gslice.evaluate() at top level would run again), fork would copy a
    # process that may hold torch or mlx threads.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "gslice.evaluation.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.close()
        while True:
            try:
                msg = pickle.load(proc.stdout)
            except EOFError:
                proc.wait()
                raise InternalError(f"the {job.runtime} run of {job.path} died ({_exit_reason(proc.returncode)}) before it finished") from None
            if msg[0] == "progress":
                progress(msg[1])
            elif msg[0] == "done":
                return msg[1], msg[2]
            elif msg[0] == "error":
                raise _error_class(msg[1])(msg[2])
            else:
                raise InternalError(f"the {job.runtime} run of {job.path} failed: {msg[1]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _error_class(name: str) -> type[GsliceError]:
    from .. import errors

    cls = getattr(errors, name, None) or getattr(runners, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, GsliceError) else GsliceError


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
