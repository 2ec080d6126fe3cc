"""The per-position arithmetic of gslice eval (gslice/evaluation/metrics.py) against direct numpy
computations written here: log-softmax, perplexity, top-1, and KL over the source's top-k plus a
tail bucket, whose gap to the full-vocabulary KL is exactly r_P * KL(renormalized tails)."""

from __future__ import annotations

import numpy as np
import pytest

from gslice.evaluation import metrics as M


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def pair(seed=0, n=40, V=500, noise=0.5, temperature=3.0):
    """Source logits peaked like a language model's (a few likely tokens, a long tail) and a
    perturbed 'slice' of them."""
    rng = np.random.default_rng(seed)
    zp = (rng.standard_normal((n, V)) * temperature).astype(np.float32)
    zq = (zp + rng.standard_normal((n, V)) * noise).astype(np.float32)
    return zp, zq, rng.integers(0, V, n)


def test_source_rows_are_the_log_softmax_of_the_logits():
    zp, _, t = pair()
    rows = M.source_rows(zp, t, k=8)
    lp = log_softmax(zp)
    np.testing.assert_allclose(rows.target_lp, lp[np.arange(len(t)), t], rtol=0, atol=1e-12)
    order = np.argsort(-lp, axis=1, kind="stable")[:, :8]
    assert (rows.topk_ids == order).all()
    np.testing.assert_allclose(rows.topk_lp, np.take_along_axis(lp, order, axis=1), rtol=0, atol=1e-12)
    tail = np.exp(lp).sum(axis=1) - np.exp(np.take_along_axis(lp, order, axis=1)).sum(axis=1)
    np.testing.assert_allclose(rows.tail, tail, rtol=1e-9, atol=1e-15)


def test_ties_go_to_the_lower_id_in_top_k_and_argmax():
    z = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]], np.float32)
    rows = M.source_rows(z, np.array([0]), k=3)
    assert rows.topk_ids.tolist() == [[1, 2, 4]]
    s = M.slice_rows(z, np.array([0]), rows)
    assert s.argmax.tolist() == [1]


def test_ties_at_the_k_th_place_decide_the_set_by_the_lower_id():
    """Logits computed in BF16 (mlx-lm runs a BF16 or quantized model in BF16) tie often, also at
    the k-th place, where the tie decides which tokens are in the top-k at all: always the lower
    ids, as a stable sort of the whole row puts them (and so the KL does not depend on the order
    in which a partial sort happens to meet them)."""
    rng = np.random.default_rng(0)
    z = rng.integers(0, 4, size=(300, 50)).astype(np.float32)  # ties everywhere
    rows = M.source_rows(z, np.zeros(300, np.int64), k=5)
    stable = np.array([np.lexsort((np.arange(50), -r))[:5] for r in z])
    assert np.array_equal(rows.topk_ids, stable)
    z = np.array([[5.0, 2.0, 2.0, 2.0, 2.0, 4.0]], np.float32)
    assert M.source_rows(z, np.array([0]), k=3).topk_ids.tolist() == [[0, 5, 1]]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    V = 300
    z = np.zeros((10, V), np.float32)
    rows = M.source_rows(z, np.arange(10), k=4)
    assert M.perplexity(rows.target_lp) == pytest.approx(V, rel=1e-12)


def test_a_model_against_itself_has_kl_exactly_zero_and_full_agreement():
    zp, _, t = pair()
    ref = M.source_rows(zp, t)
    s = M.slice_rows(zp, t, ref)
    assert (s.kl == 0).all()
    summary = M.summarize_slice(s, ref)
    assert summary.top1_agreement == 1.0 and summary.perplexity == M.summarize_source(ref).perplexity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_kl_is_the_full_kl_minus_the_tail_term_exactly(seed):
    zp, zq, t = pair(seed)
    k = 16
    ref = M.source_rows(zp, t, k)
    got = M.slice_rows(zq, t, ref).kl
    lp, lq = log_softmax(zp), log_softmax(zq)
    full = (np.exp(lp) * (lp - lq)).sum(axis=1)
    # the tail term, from the full distributions: r_P * KL(P's tail renormalized || Q's likewise)
    mask = np.ones_like(lp, bool)
    np.put_along_axis(mask, ref.topk_ids.astype(np.int64), False, axis=1)
    p, q = np.where(mask, np.exp(lp), 0), np.where(mask, np.exp(lq), 0)
    rp, rq = p.sum(1, keepdims=True), q.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = rp[:, 0] * np.where(mask, (p / rp) * (np.log(p / rp) - np.log(q / rq)), 0).sum(1)
    np.testing.assert_allclose(full - got, tail, rtol=1e-7, atol=1e-12)
    assert (got <= full + 1e-12).all() and (got >= 0).all()
    np.testing.assert_allclose(M.kl_full(zp, zq), full, rtol=1e-9, atol=1e-12)


def test_top_k_kl_grows_with_k_and_equals_the_full_kl_at_k_equal_v():
    zp, zq, t = pair(3, V=200)
    full = M.kl_full(zp, zq)
    means = []
    for k in (1, 4, 16, 64, 200):
        means.append(M.slice_rows(zq, t, M.source_rows(zp, t, k)).kl.mean())
    assert all(a <= b + 1e-12 for a, b in zip(means, means[1:]))  # a finer partition never loses KL
    assert means[-1] == pytest.approx(full.mean(), rel=1e-9)


def test_the_truncation_error_for_a_peaked_source_is_bounded_by_its_tail_mass():
    """With most of the source's probability in its top-k, as for a trained model, the error
    r_P * KL(tails) is small. Here (Gaussian logits of std 4.5 over 2,000 tokens: top-1
    probability 0.44 on average) the source leaves 5.3% outside its top-32 and the top-32 KL
    misses 7.3% of the full KL; at std 3 (25% outside) it misses 28%: the error grows with the
    tail mass, which is why reports show that mass."""
    zp, zq, t = pair(4, n=200, V=2000, noise=0.5, temperature=4.5)
    ref = M.source_rows(zp, t, 32)
    got = M.slice_rows(zq, t, ref).kl
    full = M.kl_full(zp, zq)
    assert ref.tail.mean() < 0.06
    assert (full - got).mean() <= 0.10 * full.mean()
