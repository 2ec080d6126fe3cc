"""Fixtures for the regression benchmarks: a ~1 GB synthetic checkpoint with the published E4B
layout at narrower widths (``synth.py --size mid``), written once per session and deleted after,
and a full-size (15.7 GB) layout whose shards are sparse files (headers only).

    python -m pytest benches --benchmark-enable            # all suites, figures at the end
    GSLICE_BENCH_SCRATCH=/work/bench-scratch python -m pytest benches --benchmark-enable
    GSLICE_BENCH_MID=/path/to/existing/mid python -m pytest benches --benchmark-enable

The repository's pytest settings disable benchmarks by default (``--benchmark-disable``); the
suites then run each benchmark once, as a smoke test. ``--benchmark-enable`` measures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import synth

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("gslice benchmark figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def report(name: str, benchmark, nbytes: int | None = None) -> None:
    """Adds the median time (and throughput) of a finished benchmark to the summary."""
    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: ran once, nothing measured
        return
    median = stats.stats.median
    benchmark.extra_info["median_s"] = median
    line = f"{name}: median {median:.3f} s"
    if nbytes:
        benchmark.extra_info["GB/s"] = nbytes / 1e9 / median
        line += f", {nbytes / 1e9:.3f} GB written, {nbytes / 1e9 / median:.2f} GB/s"
    FIGURES.append(line)


@pytest.fixture(scope="session")
def scratch():
    base = os.environ.get("GSLICE_BENCH_SCRATCH")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="gslice-benches-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def mid(scratch) -> Path:
    """The ~1 GB checkpoint (35 layers, hidden 512, FFN 4096). Read-only."""
    given = os.environ.get("GSLICE_BENCH_MID")
    if given:
        return Path(given)
    r = synth.write_checkpoint(scratch / "e4b-mid", "mid")
    FIGURES.append(f"synth mid: {r.file_bytes / 1e9:.3f} GB in {r.seconds_total:.2f} s ({r.mb_per_s:.0f} MB/s)")
    return Path(r.path)


@pytest.fixture(scope="session")
def sparse_e4b(scratch) -> Path:
    """The full E4B layout (1,676 tensors, 15.7 GB of shards) as sparse files: real headers
    and index, tensor data left as holes. Costs ~10 MB of disk."""
    return Path(synth.write_checkpoint(scratch / "e4b-sparse", "full", sparse=True).path)


@pytest.fixture
def out_dir(scratch):
    path = scratch / "out"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)
