"""gslice.ranges: range-set algebra against sets of byte positions, and the bytes each tensor
operation reads against numpy slicing of an array of positions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gslice import engine
from gslice.ranges import RangeSet, tensor_ranges


def positions(rs: RangeSet) -> set[int]:
    return {x for b, e in rs.pairs() for x in range(b, e)}


def random_pairs(rng: random.Random, n: int, span: int = 300) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        b = rng.randrange(span)
        out.append((b, b + rng.randrange(0, 40)))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_set_algebra_matches_sets_of_positions(seed):
    rng = random.Random(seed)
    a, b = random_pairs(rng, rng.randrange(0, 12)), random_pairs(rng, rng.randrange(0, 12))
    x, y = RangeSet.of(a), RangeSet.of(b)
    px = {p for s, e in a for p in range(s, e)}
    py = {p for s, e in b for p in range(s, e)}
    assert positions(x) == px and x.total == len(px)
    assert positions(x.union(y)) == px | py
    assert positions(x.minus(y)) == px - py
    assert positions(x.intersect(y)) == px & py
    assert x.covers(y) == (py <= px)
    for r in (x, x.union(y), x.minus(y)):  # normalized: sorted, disjoint, not touching, not empty
        pairs = r.pairs()
        assert all(e > s for s, e in pairs) and all(pairs[i][1] < pairs[i + 1][0] for i in range(len(pairs) - 1))


@pytest.mark.parametrize("gap", [0, 1, 5, 17])
def test_coalescing_closes_gaps_up_to_the_limit_only(gap):
    rng = random.Random(gap)
    x = RangeSet.of(random_pairs(rng, 30, 2000))
    c = x.coalesce(gap)
    pairs, orig = c.pairs(), x.pairs()
    assert positions(x) <= positions(c)
    gaps = [orig[i + 1][0] - orig[i][1] for i in range(len(orig) - 1)]
    closed = [g for g in gaps if g <= gap]
    assert c.total - x.total == sum(closed)
    assert len(pairs) == len(orig) - len(closed)
    assert all(pairs[i + 1][0] - pairs[i][1] > gap for i in range(len(pairs) - 1))


def test_pieces_cover_the_ranges_in_bounded_requests():
    x = RangeSet.of([(0, 10), (20, 45)])
    assert x.split(8) == [(0, 8), (8, 10), (20, 28), (28, 36), (36, 44), (44, 45)]


@pytest.mark.parametrize(
    "shape, op, reference",
    [
        ((6, 5), engine.copy(), lambda a: a),
        ((6, 5), engine.keep_rows(4), lambda a: a[:4]),
        ((6, 5), engine.keep_row_blocks(2, [0, 2]), lambda a: np.concatenate([a[0:2], a[4:6]])),
        ((6, 5), engine.keep_cols(3), lambda a: a[:, :3]),
        ((4, 12), engine.keep_col_blocks(3, [0, 2, 3]), lambda a: np.concatenate([a[:, 0:3], a[:, 6:12]], axis=1)),
        ((2, 3, 8), engine.keep_cols(5), lambda a: a[..., :5]),
        ((0, 4), engine.keep_cols(2), lambda a: a[:, :2]),
    ],
)
def test_an_operation_reads_exactly_the_elements_numpy_slicing_takes(shape, op, reference):
    offset, es = 1000, 2  # BF16
    elems = offset + es * np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    want = {int(p) + k for p in reference(elems).ravel() for k in range(es)}
    begins, ends = tensor_ranges(offset, shape, "BF16", op)
    assert positions(RangeSet.of(zip(begins, ends))) == want
