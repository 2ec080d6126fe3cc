"""The independent side of the evaluation tests: the windowing rule of docs/evaluation.md written
out again (not imported from gslice), perplexity, KL and top-1 agreement in numpy from a
runtime's own logits, and the logits of llama.cpp (llama-cpp-python's high-level API) and
mlx-lm (its own load), not gslice's runners."""

from __future__ import annotations

import numpy as np
import pytest

CONTEXT, STRIDE, MAX_TOKENS = 96, 60, 700
EXACT = 1e-9  # relative: the same float32 logits on both sides, float64 arithmetic


def windows_by_rule(texts_ids, bos, context, stride, max_tokens):
    """The stated rule: the first max_tokens tokens of the texts in order; per text, windows
    [BOS, t_s .. t_{s+C-2}] at s = 0, S, 2S, ...; window s scores targets from t_{s+o},
    o = 0 for s = 0 else C - 1 - S; stop when nothing is left to score."""
    out, left = [], max_tokens
    for ids in texts_ids:
        ids = list(ids[:left])
        left -= len(ids)
        s = 0
        while True:
            o = 0 if s == 0 else context - 1 - stride
            if s + o >= len(ids):
                break
            out.append((np.array([bos] + ids[s : s + context - 1]), o))
            s += stride
    return out


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def reference(windows, source_logits, slice_logits, top_k: int | None = None) -> dict:
    """The figures from the two models' logits per window: KL over the whole vocabulary, or
    over the source's ``top_k`` tokens plus one bucket for the others."""
    tp, tq, kl, agree = [], [], [], []
    for tokens, o in windows:
        n = len(tokens) - 1
        zp, zq = source_logits(tokens)[o:n], slice_logits(tokens)[o:n]
        lp, lq, t = log_softmax(zp), log_softmax(zq), tokens[o + 1 :]
        tp.append(lp[np.arange(len(t)), t])
        tq.append(lq[np.arange(len(t)), t])
        kl.append((np.exp(lp) * (lp - lq)).sum(axis=1) if top_k is None else top_k_kl(lp, lq, top_k))
        agree.append(zp.argmax(axis=1) == zq.argmax(axis=1))
    tp, tq, kl, agree = map(np.concatenate, (tp, tq, kl, agree))
    return {
        "tokens": len(tp),
        "source_perplexity": float(np.exp(-tp.mean())),
        "perplexity": float(np.exp(-tq.mean())),
        "kl_mean": float(kl.mean()),
        "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)),
        "top1_agreement": float(agree.mean()),
    }


def top_k_kl(lp: np.ndarray, lq: np.ndarray, k: int) -> np.ndarray:
    """KL over the source's k most likely tokens (ties to the lower id) plus one bucket for
    all the others, per row, from full log-probabilities."""
    order = np.lexsort((np.arange(lp.shape[1])[None].repeat(len(lp), 0), -lp), axis=1)[:, :k]
    rows = np.arange(len(lp))[:, None]
    p, q = np.exp(lp), np.exp(lq)
    head = (p[rows, order] * (lp[rows, order] - lq[rows, order])).sum(axis=1)
    outside = np.ones_like(p, dtype=bool)
    outside[rows, order] = False
    rp, rq = (p * outside).sum(axis=1), (q * outside).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # rp = 0 (k = V) contributes 0
        tail = np.where(rp > 0, rp * (np.log(rp) - np.log(rq)), 0.0)
    return head + tail


def assert_same(got: dict, ref: dict) -> None:
    """``got``: a summary as a dict (a ``--json`` report's model entry, a recorded evaluation)."""
    for name in ("perplexity", "kl_mean", "kl_median", "kl_p99", "top1_agreement"):
        assert got[name] == pytest.approx(ref[name], rel=EXACT, abs=1e-12), name


def assert_figures(report, slice_index, ref):
    got = report.slices[slice_index].summary
    assert report.tokens_scored == got.tokens == ref["tokens"]
    assert report.source.summary.perplexity == pytest.approx(ref["source_perplexity"], rel=EXACT)
    assert_same(vars(got), ref)


def llama_logits(path, n_ctx: int = CONTEXT):
    """llama-cpp-python's high-level API: Llama(logits_all=True).eval, then its scores, with the
    two settings gslice states: flash attention on (llama.cpp's default "auto" enables it on the
    CPU; it moves the logits of these tiny models by up to 0.045 against the unfused path, over
    81 tokens) and no extra buffer types (Llama has no argument for it: its default model
    parameters are given ``use_extra_bufts = False`` here; with them, llama.cpp repacks Q4_0
    weights for other kernels, which round differently: 0.4% on the perplexity of the q4_0
    slice of test_eval_outputs.py)."""
    from unittest import mock

    import llama_cpp
    from llama_cpp import Llama

    default = llama_cpp.llama_model_default_params

    def model_params():
        params = default()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", model_params):
        llm = Llama(str(path), n_ctx=n_ctx, n_batch=64, n_ubatch=64, n_threads=1, n_threads_batch=1, logits_all=True,
                    flash_attn=True, verbose=False)
    assert llm.model_params.use_extra_bufts is False

    def run(tokens):
        llm.reset()
        llm.eval([int(t) for t in tokens])
        return np.array(llm.scores[: len(tokens)])

    return run, llm


def mlx_logits(path):
    """mlx-lm's own load, one forward pass per window from a fresh KV cache (which Gemma 3n needs
    there: docs/evaluation.md), logits as float32; and its tokenizer."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, tok = load(str(path))

    def run(tokens):
        out = model(mx.array(np.asarray(tokens, np.int32))[None], cache=make_prompt_cache(model))
        return np.array(out[0].astype(mx.float32))

    return run, tok
