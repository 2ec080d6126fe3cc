"""How a text becomes the windows that every runtime evaluates, identically.

Each text is tokenized on its own with the source's tokenizer, without special tokens:
t_0 .. t_{n-1}. With context C and stride S (1 <= S <= C - 1; default C - 1):

* a window is BOS followed by up to C - 1 consecutive tokens of one text:
  [BOS, t_s, ..., t_{s+C-2}]; windows never span two texts;
* the windows of a text start at s = 0, S, 2S, ... while they still score a token;
* each window is run from an empty KV cache; its output at position i (having seen BOS and
  t_s .. t_{s+i-1}) is the prediction of t_{s+i};
* window s scores t_j for j in [s + o, min(s + C - 1, n)), with o = 0 for the first window
  of a text and o = C - 1 - S for the others: every token is scored exactly once, and a token
  scored in a later window has at least C - 1 - S tokens of its text before it in the window.
  The first token of every window (BOS) is never scored: nothing predicts it.

With the default stride the windows do not overlap and each token is scored once with
between 0 and C - 2 tokens of context. A smaller stride gives every scored token more context
at the price of running overlapping tokens again.

``--max-tokens N`` keeps the first N tokens of the texts, in order, before windowing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpecError


@dataclass(frozen=True)
class Window:
    text: int  # index of the text it comes from
    start: int  # s: the text position of its first token after BOS
    tokens: np.ndarray  # int32 [L]: BOS, then L - 1 text tokens
    first_scored: int  # o: the first scored text token is t_{s+o}

    @property
    def scored_positions(self) -> range:
        """Positions i of the window whose output is scored (predicting tokens[i + 1])."""
        return range(self.first_scored, len(self.tokens) - 1)

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[self.first_scored + 1 :]


def check_geometry(context: int, stride: int | None) -> int:
    """The stride to use (default C - 1), or a one-line error about the pair."""
    if context < 2:
        raise SpecError(f"--context {context}: a window needs at least 2 tokens (BOS and one scored token)")
    if stride is None:
        return context - 1
    if not 1 <= stride <= context - 1:
        raise SpecError(f"--stride {stride}: must be between 1 and context - 1 = {context - 1} (no token may be skipped)")
    return stride


def truncate(texts: list[np.ndarray], max_tokens: int | None) -> list[np.ndarray]:
    """The first ``max_tokens`` tokens of the texts, in order: one entry per text, those past
    the limit empty."""
    if max_tokens is None:
        return list(texts)
    out, left = [], max_tokens
    for t in texts:
        out.append(t[: max(left, 0)])
        left -= len(out[-1])
    return out


def make_windows(texts: list[np.ndarray], bos: int, context: int, stride: int) -> list[Window]:
    windows = []
    for k, ids in enumerate(texts):
        ids = np.asarray(ids, dtype=np.int32)
        n, s = len(ids), 0
        while True:
            o = 0 if s == 0 else context - 1 - stride
            if s + o >= n:
                break
            body = ids[s : s + context - 1]
            windows.append(Window(k, s, np.concatenate([np.array([bos], np.int32), body]), o))
            s += stride
    return windows


def scored_count(windows: list[Window]) -> int:
    return sum(len(w.scored_positions) for w in windows)


def processed_count(windows: list[Window]) -> int:
    return sum(len(w.tokens) for w in windows)
