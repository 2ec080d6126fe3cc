"""Byte ranges of source shards: which bytes a plan reads, and sets of half-open ranges
[begin, end) kept sorted and disjoint.

What a tensor operation reads (the engine's items.rs and qband.rs read exactly these bytes,
quantized or not): ``copy`` the whole tensor; ``rows`` each kept row range, contiguous;
``cols`` in every row of the tensor, each kept column range - a short strided segment per row.

Coalescing merges ranges separated by at most ``gap`` bytes: fetching a small gap costs less
than one more HTTP request (a round trip). Every merge adds at most ``gap`` bytes, so the slack
of a coalesced set is bounded by ``gap`` times the number of gaps it closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .engine import DTYPE_SIZES, CheckpointInfo, TensorPlan

# Gaps up to this size are fetched rather than skipped. At 10-20 MB/s a 1 MiB gap takes
# 50-100 ms, about one round trip to a CDN, which is what a separate request costs.
DEFAULT_GAP = 1 << 20


@dataclass(frozen=True)
class RangeSet:
    """Sorted, disjoint, non-empty half-open ranges (two int64 arrays of equal length)."""

    begins: np.ndarray
    ends: np.ndarray

    @staticmethod
    def empty() -> "RangeSet":
        return RangeSet(np.zeros(0, np.int64), np.zeros(0, np.int64))

    @staticmethod
    def of(pairs: Iterable[Sequence[int]], gap: int = 0) -> "RangeSet":
        arr = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
        return normalize(arr[:, 0], arr[:, 1], gap)

    def __len__(self) -> int:
        return len(self.begins)

    @property
    def total(self) -> int:
        return int((self.ends - self.begins).sum())

    def pairs(self) -> list[list[int]]:
        return [[int(b), int(e)] for b, e in zip(self.begins, self.ends)]

    def union(self, other: "RangeSet") -> "RangeSet":
        return _combine(self, other, lambda a, b: (a > 0) | (b > 0))

    def minus(self, other: "RangeSet") -> "RangeSet":
        return _combine(self, other, lambda a, b: (a > 0) & (b == 0))

    def intersect(self, other: "RangeSet") -> "RangeSet":
        return _combine(self, other, lambda a, b: (a > 0) & (b > 0))

    def covers(self, other: "RangeSet") -> bool:
        return len(other.minus(self)) == 0

    def coalesce(self, gap: int) -> "RangeSet":
        return normalize(self.begins, self.ends, gap)

    def split(self, piece: int) -> list[tuple[int, int]]:
        """The ranges cut into pieces of at most ``piece`` bytes (units of parallel work)."""
        out = []
        for b, e in zip(self.begins.tolist(), self.ends.tolist()):
            out += [(s, min(s + piece, e)) for s in range(b, e, piece)]
        return out


def normalize(begins: np.ndarray, ends: np.ndarray, gap: int = 0) -> RangeSet:
    """Sorts ranges and merges those that overlap, touch, or lie at most ``gap`` bytes apart;
    empty ranges are dropped."""
    b = np.asarray(begins, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    keep = e > b
    b, e = b[keep], e[keep]
    if len(b) == 0:
        return RangeSet.empty()
    order = np.argsort(b, kind="stable")
    b, e = b[order], e[order]
    reach = np.maximum.accumulate(e)
    starts_group = np.empty(len(b), dtype=bool)
    starts_group[0] = True
    starts_group[1:] = b[1:] > reach[:-1] + gap
    first = np.flatnonzero(starts_group)
    last = np.append(first[1:], len(b)) - 1
    return RangeSet(b[first], reach[last])


def _combine(x: RangeSet, y: RangeSet, keep) -> RangeSet:
    """Set algebra by a sweep over all boundaries: ``keep(in_x, in_y)`` says, for each
    elementary interval between consecutive boundaries, whether it belongs to the result."""
    points = np.sort(np.concatenate([x.begins, x.ends, y.begins, y.ends]))
    if len(points) < 2:
        return RangeSet.empty()
    points = points[np.r_[True, points[1:] != points[:-1]]]
    lo, hi = points[:-1], points[1:]

    def inside(s: RangeSet) -> np.ndarray:
        # An elementary interval lies inside s iff the last range starting at or before its
        # start ends after that start.
        i = np.searchsorted(s.begins, lo, side="right") - 1
        ok = i >= 0
        out = np.zeros(len(lo), dtype=np.int64)
        out[ok] = (s.ends[i[ok]] > lo[ok]).astype(np.int64)
        return out

    mask = keep(inside(x), inside(y))
    return normalize(lo[mask], hi[mask])


# -- what a plan reads ----------------------------------------------------------------------


def tensor_ranges(offset: int, shape: Sequence[int], dtype: str, op: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Absolute byte ranges a tensor stored at ``offset`` gives to operation ``op``."""
    es = DTYPE_SIZES[dtype]
    nbytes = math.prod(shape) * es
    kind = op["kind"]
    if kind == "copy" or nbytes == 0:
        return np.array([offset], np.int64), np.array([offset + nbytes], np.int64)
    if kind == "rows":
        row = nbytes // shape[0]
        r = np.asarray(op["ranges"], np.int64).reshape(-1, 2)
        return offset + r[:, 0] * row, offset + r[:, 1] * row
    if kind == "cols":
        row = shape[-1] * es
        rows = math.prod(shape[:-1])
        starts = offset + np.arange(rows, dtype=np.int64)[:, None] * row
        r = np.asarray(op["ranges"], np.int64).reshape(-1, 2)
        return (starts + r[:, 0] * es).ravel(), (starts + r[:, 1] * es).ravel()
    raise ValueError(f"unknown operation {kind!r}")


def plan_ranges(ck: CheckpointInfo, tensors: Iterable[TensorPlan]) -> dict[int, RangeSet]:
    """Shard index -> the exact source bytes the tensors read (no coalescing)."""
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    seen: set[tuple] = set()
    for t in tensors:
        for source in (t.source, *t.stack):  # a stacked GGUF tensor reads each source the same way
            key = (source, repr(t.op))
            if key in seen:  # bulk: many outputs read the same source tensor the same way
                continue
            seen.add(key)
            info = ck.tensors[source]
            parts.setdefault(info.shard, []).append(tensor_ranges(info.offset, info.shape, info.dtype, t.op))
    return {
        shard: normalize(np.concatenate([b for b, _ in ps]), np.concatenate([e for _, e in ps]))
        for shard, ps in parts.items()
    }
