"""What a range download must fetch, derived without gslice's planner: every source tensor
becomes an array holding each element's file position, the numpy reference slicer
(gslice.testing.reference_slice) slices those arrays, and the positions that come out are the
bytes a slice reads; they are merged across gaps here. Plus readers of the range cache's
files (their format is documented in gslice/range_cache.py)."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np

from gslice.testing import reference_slice

REPO = "google/gemma-3n-E4B-it"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARD_BITS = 40  # element positions: shard index << 40 | byte offset in the shard


# -- the independent expectation ----------------------------------------------------------


def read_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return 8 + n, json.loads(f.read(n))


def element_positions(src: Path) -> dict[str, np.ndarray]:
    """Every BF16 tensor of ``src`` as an int64 array of its elements' positions."""
    out = {}
    for k, f in enumerate(sorted(src.glob("*.safetensors"))):
        data_start, header = read_header(f)
        for name, t in header.items():
            if name == "__metadata__":
                continue
            assert t["dtype"] == "BF16"
            n = int(np.prod(t["shape"], dtype=np.int64))
            first = (k << SHARD_BITS) + data_start + t["data_offsets"][0]
            out[name] = (first + 2 * np.arange(n, dtype=np.int64)).reshape(t["shape"])
    return out


def merge(starts: np.ndarray, width: int, gap: int) -> list[tuple[int, int]]:
    """Sorted, distinct element starts -> ranges of ``width``-byte elements, closing gaps of
    at most ``gap`` bytes."""
    if len(starts) == 0:
        return []
    breaks = np.flatnonzero(starts[1:] - (starts[:-1] + width) > gap) + 1
    first, last = np.r_[0, breaks], np.r_[breaks, len(starts)] - 1
    return list(zip(starts[first].tolist(), (starts[last] + width).tolist()))


def expected_reads(src: Path, gap: int, **spec) -> dict[str, list[tuple[int, int]]]:
    """Shard name -> the byte ranges slicing ``src`` with ``spec`` reads, merged across gaps."""
    config = json.loads((src / "config.json").read_text())
    out = reference_slice(element_positions(src), config, **spec)
    positions = np.sort(np.concatenate([a.ravel() for a in out.values()]))
    positions = positions[np.r_[True, positions[1:] != positions[:-1]]]  # distinct (np.unique hashes: slow)
    names = sorted(p.name for p in src.glob("*.safetensors"))
    mask = (1 << SHARD_BITS) - 1
    return {name: merge(positions[positions >> SHARD_BITS == k] & mask, 2, gap) for k, name in enumerate(names)}


def total(ranges: dict[str, list[tuple[int, int]]]) -> int:
    return sum(e - b for rs in ranges.values() for b, e in rs)


def union(rs) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for b, e in sorted(rs):
        if out and b <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([b, e])
    return [(b, e) for b, e in out]


def minus(a: dict, b: dict) -> int:
    """Bytes of ``a`` not in ``b`` (both shard -> ranges)."""
    missing = 0
    for name, rs in a.items():
        have = union(b.get(name, []))
        starts = [lo for lo, _ in have]
        for lo, hi in union(rs):
            covered = 0
            i = max(bisect.bisect_right(starts, lo) - 1, 0)
            while i < len(have) and have[i][0] < hi:
                covered += max(0, min(hi, have[i][1]) - max(lo, have[i][0]))
                i += 1
            missing += hi - lo - covered
    return missing


def headers(src: Path) -> int:
    return sum(read_header(f)[0] for f in src.glob("*.safetensors"))


def same_output(got: Path, want: Path) -> list[str]:
    """Differences between two outputs, all files but the manifest and the model card (both
    name the source)."""
    skip = {"gslice-manifest.json", "README.md"}
    names = {p.name for p in got.iterdir()} - skip, {p.name for p in want.iterdir()} - skip
    problems = [] if names[0] == names[1] else [f"files differ: {sorted(names[0] ^ names[1])}"]
    return problems + [n for n in sorted(names[0] & names[1]) if (got / n).read_bytes() != (want / n).read_bytes()]


def commit_folder(cache: Path) -> Path:
    return cache / "hub-ranges" / f"models--{REPO.replace('/', '--')}" / COMMIT


def recorded(cache: Path, src: Path) -> dict[str, list[tuple[int, int]]]:
    """The data ranges the range cache's fetch logs hold (format: range_cache.py), read
    without gslice; the header's own line is left out."""
    out = {}
    for log in (commit_folder(cache) / ".gslice").glob("*.ranges"):
        name = log.name[: -len(".ranges")]
        lines = log.read_bytes().split(b"\n")[:-1]
        out[name] = union(r for r in (tuple(map(int, line.split())) for line in lines) if r[0] >= read_header(src / name)[0])
    return out


def assert_recorded_bytes_are_right(cache: Path, src: Path, kept: dict) -> None:
    """The fetch log claims only bytes that are on disk, equal to the source's."""
    for name, rs in kept.items():
        sparse, real = (commit_folder(cache) / name).read_bytes(), (src / name).read_bytes()
        assert all(sparse[b:e] == real[b:e] for b, e in rs), name
