"""Per-position figures from one block of logits, and the summary of a run.

Everything is computed in float64 from the runtime's float32 logits z (one row per scored
position, V columns):

    log p(v) = z_v - logsumexp(z)

* the source run keeps, per position, the log-probability of the actual next token, its top-k
  tokens (ids and log-probabilities, in descending order, ties to the lower id) and the exact
  probability mass of all other tokens, r_P = sum of p(v) over v outside the top-k;
* a slice run computes, against those, KL(source || slice) over the top-k tokens plus one
  "everything else" bucket:

      KL_k = sum_{v in K} P(v) log(P(v) / Q(v))  +  r_P log(r_P / r_Q)

  where K is the source's top-k at that position and r_Q the slice's mass outside K (summed
  over the slice's own probabilities, not 1 - sum). This is the exact KL divergence between
  the two distributions with the tokens outside K merged into one outcome, so by the log-sum
  inequality 0 <= KL_k <= KL, and the truncation error is exactly

      KL - KL_k = r_P * KL(P restricted to the tail, renormalized || Q likewise)

  which is zero when k = V, and small when the source puts little mass outside its top-k
  (tests/test_eval_metrics.py and tests/interop/test_eval.py measure it against the full KL).
* top-1 agreement: the slice's most likely token (ties to the lower id) equals the source's.

Perplexity = exp(-mean log p(next token)) over the scored positions. KL mean, median and p99
are over scored positions (p99: numpy's linear interpolation between order statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 32
_ROWS = 16  # rows converted to float64 at a time: 16 x 262,400 x 8 bytes = 34 MB for Gemma 3n


@dataclass
class SourceRows:
    """The source's figures for a run of positions (the content of the cache)."""

    target_lp: np.ndarray  # float64 [n]
    topk_ids: np.ndarray  # int32 [n, k]
    topk_lp: np.ndarray  # float64 [n, k]
    tail: np.ndarray  # float64 [n]: probability outside the top-k

    @staticmethod
    def concat(parts: list["SourceRows"], k: int) -> "SourceRows":
        if not parts:
            return SourceRows(np.zeros(0), np.zeros((0, k), np.int32), np.zeros((0, k)), np.zeros(0))
        return SourceRows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("target_lp", "topk_ids", "topk_lp", "tail")))

    def slice(self, a: int, b: int) -> "SourceRows":
        return SourceRows(self.target_lp[a:b], self.topk_ids[a:b], self.topk_lp[a:b], self.tail[a:b])


@dataclass
class SliceRows:
    target_lp: np.ndarray  # float64 [n]
    argmax: np.ndarray  # int32 [n]
    kl: np.ndarray  # float64 [n]

    @staticmethod
    def concat(parts: list["SliceRows"]) -> "SliceRows":
        if not parts:
            return SliceRows(np.zeros(0), np.zeros(0, np.int32), np.zeros(0))
        return SliceRows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("target_lp", "argmax", "kl")))


def _probabilities(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [m, V] float64, log of the normalizer [m])."""
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    return e / s, (m + np.log(s))[:, 0]


def _topk(z: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits per row, descending, ties to the lower id - also at the k-th
    place, where ties decide which tokens are in the set at all (logits computed in BF16, as
    mlx-lm computes a BF16 or quantized model, tie often): every id whose logit reaches the
    k-th largest value is a candidate, and the candidates are sorted by (value descending, id)."""
    k = min(k, z.shape[1])
    kth = -np.partition(-z, k - 1, axis=1)[:, k - 1]
    out = np.empty((len(z), k), np.int32)
    for i, (row, bound) in enumerate(zip(z, kth)):
        ids = np.flatnonzero(row >= bound)
        if len(ids) < k:  # NaN logits (a broken model): NaN sorts last
            ids = np.arange(len(row))
        out[i] = ids[np.lexsort((ids, -row[ids]))[:k]]
    return out


def _tail(p: np.ndarray, ids: np.ndarray) -> np.ndarray:
    p = p.copy()
    np.put_along_axis(p, ids.astype(np.int64), 0.0, axis=1)
    return p.sum(axis=1)


def source_rows(logits: np.ndarray, targets: np.ndarray, k: int = TOP_K) -> SourceRows:
    parts = []
    for a in range(0, len(logits), _ROWS):
        z, t = logits[a : a + _ROWS], targets[a : a + _ROWS]
        p, log_norm = _probabilities(z)
        ids = _topk(z, k)
        lp = np.take_along_axis(z, ids, axis=1).astype(np.float64) - log_norm[:, None]
        target = z[np.arange(len(z)), t].astype(np.float64) - log_norm
        parts.append(SourceRows(target, ids, lp, _tail(p, ids)))
    return SourceRows.concat(parts, min(k, logits.shape[1]))


def slice_rows(logits: np.ndarray, targets: np.ndarray, ref: SourceRows) -> SliceRows:
    parts = []
    for a in range(0, len(logits), _ROWS):
        z, t, r = logits[a : a + _ROWS], targets[a : a + _ROWS], ref.slice(a, a + _ROWS)
        p, log_norm = _probabilities(z)
        lq = np.take_along_axis(z, r.topk_ids.astype(np.int64), axis=1).astype(np.float64) - log_norm[:, None]
        target = z[np.arange(len(z)), t].astype(np.float64) - log_norm
        parts.append(SliceRows(target, _argmax(z), kl_topk(r.topk_lp, r.tail, lq, _tail(p, r.topk_ids))))
    return SliceRows.concat(parts)


def _argmax(z: np.ndarray) -> np.ndarray:
    return z.argmax(axis=1).astype(np.int32)  # the first maximum: ties to the lower id


def kl_topk(lp: np.ndarray, tail_p: np.ndarray, lq: np.ndarray, tail_q: np.ndarray) -> np.ndarray:
    """KL_k per row (see the module docstring) from log P and log Q on the top-k and both tails."""
    with np.errstate(divide="ignore", invalid="ignore"):
        head = np.sum(np.exp(lp) * (lp - lq), axis=1)
        tail = np.where(tail_p > 0, tail_p * (np.log(tail_p) - np.log(tail_q)), 0.0)
    # The two distributions each sum to 1 within float64 rounding, so a KL below zero is
    # rounding (at most ~1e-15): report it as 0.
    return np.maximum(head + tail, 0.0)


def kl_full(logits_p: np.ndarray, logits_q: np.ndarray) -> np.ndarray:
    """The full-vocabulary KL(P || Q) per row, for tests and for bounding KL_k."""
    p, lzp = _probabilities(logits_p)
    _, lzq = _probabilities(logits_q)
    lp = logits_p.astype(np.float64) - lzp[:, None]
    lq = logits_q.astype(np.float64) - lzq[:, None]
    return np.sum(p * (lp - lq), axis=1)


@dataclass(frozen=True)
class Summary:
    tokens: int
    perplexity: float
    kl_mean: float | None = None
    kl_median: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None  # fraction in [0, 1]
    source_tail: float | None = None  # mean probability the source puts outside its top-k


def summarize_source(rows: SourceRows) -> Summary:
    return Summary(len(rows.target_lp), perplexity(rows.target_lp), 0.0, 0.0, 0.0, 1.0, float(np.mean(rows.tail)))


def summarize_slice(rows: SliceRows, ref: SourceRows) -> Summary:
    kl = rows.kl
    return Summary(
        tokens=len(kl),
        perplexity=perplexity(rows.target_lp),
        kl_mean=float(np.mean(kl)),
        kl_median=float(np.median(kl)),
        kl_p99=float(np.percentile(kl, 99)),
        top1_agreement=float(np.mean(rows.argmax == ref.topk_ids[:, 0])),
        source_tail=float(np.mean(ref.tail)),
    )


def perplexity(target_lp: np.ndarray) -> float:
    return float(np.exp(-np.mean(target_lp)))
