"""The windowing every runtime shares (gslice/evaluation/windows.py): BOS + up to C - 1 text
tokens per window, starts S apart, every text token scored exactly once, BOS never scored, and
a token scored in a later window has at least C - 1 - S tokens of context before it."""

from __future__ import annotations

import numpy as np
import pytest

from gslice.errors import SpecError
from gslice.evaluation.windows import check_geometry, make_windows, processed_count, scored_count, truncate

BOS = 2


def scored(windows):
    """(text, text position of the target, tokens of context before it in its window) per
    scored position, computed from the windows' tokens alone."""
    out = []
    for w in windows:
        for i in w.scored_positions:
            out.append((w.text, w.start + i, i))
    return out


@pytest.mark.parametrize("n,context,stride", [(10, 4, 3), (10, 4, 1), (10, 4, 2), (3, 8, 7), (7, 8, 7), (8, 8, 7), (100, 16, 5)])
def test_every_token_is_scored_once_with_the_stated_context(n, context, stride):
    ids = np.arange(100, 100 + n, dtype=np.int32)
    windows = make_windows([ids], BOS, context, stride)
    got = scored(windows)
    assert [j for _, j, _ in got] == list(range(n))  # each text token once, in order
    for w in windows:
        assert w.tokens[0] == BOS and len(w.tokens) <= context
        # window tokens after BOS are the text from its start
        assert list(w.tokens[1:]) == list(ids[w.start : w.start + len(w.tokens) - 1])
        # position i predicts tokens[i + 1], the text token at w.start + i
        for i in w.scored_positions:
            assert w.tokens[i + 1] == ids[w.start + i]
    for w in windows[1:]:
        assert all(i >= context - 1 - stride for i in w.scored_positions)  # i = text tokens before the target
    assert [w.start for w in windows] == list(range(0, stride * len(windows), stride))


def test_default_stride_makes_windows_that_do_not_overlap():
    ids = np.arange(10, dtype=np.int32)
    windows = make_windows([ids], BOS, 4, check_geometry(4, None))
    assert [list(w.tokens) for w in windows] == [[2, 0, 1, 2], [2, 3, 4, 5], [2, 6, 7, 8], [2, 9]]
    assert scored_count(windows) == 10 and processed_count(windows) == 14


def test_windows_never_span_texts_and_max_tokens_keeps_the_first_tokens_in_order():
    a, b = np.arange(5, dtype=np.int32), np.arange(50, 56, dtype=np.int32)
    kept = truncate([a, b], 7)
    assert [list(t) for t in kept] == [[0, 1, 2, 3, 4], [50, 51]]
    windows = make_windows(kept, BOS, 4, 3)
    assert [(w.text, list(w.tokens)) for w in windows] == [(0, [2, 0, 1, 2]), (0, [2, 3, 4]), (1, [2, 50, 51])]
    assert [list(t) for t in truncate([a, b], 3)] == [[0, 1, 2], []]
    assert make_windows([np.zeros(0, np.int32)], BOS, 4, 3) == []


@pytest.mark.parametrize("context,stride,message", [
    (1, None, "--context 1: a window needs at least 2 tokens (BOS and one scored token)"),
    (8, 8, "--stride 8: must be between 1 and context - 1 = 7 (no token may be skipped)"),
    (8, 0, "--stride 0: must be between 1 and context - 1 = 7 (no token may be skipped)"),
])
def test_bad_geometry_is_one_line(context, stride, message):
    with pytest.raises(SpecError) as e:
        check_geometry(context, stride)
    assert str(e.value) == message
