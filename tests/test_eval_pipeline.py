"""evaluate() end to end on a stand-in runtime: a numpy 'model' whose logits at each position
depend on the whole prefix (so a wrong window, position or block split shows), served in blocks
of any size as llama.cpp serves 64-token batches. The figures must equal a direct computation,
whatever the block size; the source runs once per key; a slice with another vocabulary is
refused in one line. (The real runtimes are checked the same way in tests/interop/test_eval.py.)"""

from __future__ import annotations

import types

import numpy as np
import pytest

from gslice.errors import SourceError
from gslice.evaluation import EvalSettings, evaluate, runners
from gslice.evaluation.run import RUNS

V = 40
BOS = 1


def prefix_logits(tokens: np.ndarray, seed: int, vocab: int = V) -> np.ndarray:
    """Row i: logits after tokens[: i + 1], from a running hash of the prefix."""
    rows, h = [], seed
    for t in tokens:
        h = (h * 1_000_003 + int(t) + 7) % (2**31)
        rows.append(np.random.default_rng(h).standard_normal(vocab).astype(np.float32) * 3)
    return np.stack(rows)


class FakeRunner(runners.Runner):
    def __init__(self, path, block):
        name = path.name
        self.seed = {"source": 0, "same": 0}.get(name, 99)
        self.vocab_size = 50 if name == "bigger" else V
        self.block, self.settings = block, {}

    def window_logits(self, tokens):
        z = prefix_logits(tokens, self.seed, self.vocab_size)
        for a in range(0, len(z), self.block):
            yield z[a : a + self.block]


class FakeTokenizer(runners.Tokenizer):
    bos = BOS

    def encode(self, text):
        return np.array([2 + (ord(c) % (V - 2)) for c in text], np.int32)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A 'fake' runtime for every path; models are empty files named source/same/other/bigger."""
    block = {"size": 5}
    module = types.SimpleNamespace(load=lambda path, context, threads: FakeRunner(path, block["size"]),
                                   load_tokenizer=lambda path: FakeTokenizer())
    monkeypatch.setitem(runners.RUNTIMES, "fake", runners.RuntimeInfo("fake", "-", ("numpy",), ("numpy",), "-"))
    monkeypatch.setattr(runners, "runtime_of", lambda path: "fake")
    monkeypatch.setattr(runners, "module", lambda runtime: module)
    paths = {}
    for name in ("source", "same", "other", "bigger"):
        paths[name] = tmp_path / name
        paths[name].write_text(name)
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 3)
    return types.SimpleNamespace(paths=paths, text=text, block=block, cache=tmp_path / "cache")


def direct(text: str, context: int, stride: int, seed_p: int, seed_q: int) -> dict:
    ids = [2 + (ord(c) % (V - 2)) for c in text]
    lp_all, lq_all, kl, agree = [], [], [], []
    s = 0
    while True:
        o = 0 if s == 0 else context - 1 - stride
        if s + o >= len(ids):
            break
        w = np.array([BOS] + ids[s : s + context - 1])
        n = len(w) - 1
        zp, zq = prefix_logits(w, seed_p)[o:n].astype(np.float64), prefix_logits(w, seed_q)[o:n].astype(np.float64)
        lp = zp - np.log(np.exp(zp).sum(1, keepdims=True))
        lq = zq - np.log(np.exp(zq).sum(1, keepdims=True))
        t = w[o + 1 :]
        lp_all.append(lp[np.arange(len(t)), t])
        lq_all.append(lq[np.arange(len(t)), t])
        kl.append((np.exp(lp) * (lp - lq)).sum(1))
        agree.append(zp.argmax(1) == zq.argmax(1))
        s += stride
    kl = np.concatenate(kl)
    return {"tokens": len(kl), "source": np.exp(-np.concatenate(lp_all).mean()), "slice": np.exp(-np.concatenate(lq_all).mean()),
            "kl_mean": kl.mean(), "kl_median": np.median(kl), "kl_p99": np.percentile(kl, 99), "top1": np.concatenate(agree).mean()}


@pytest.mark.parametrize("block", [1, 5, 64])
@pytest.mark.parametrize("context,stride", [(16, 15), (16, 6)])
def test_figures_equal_a_direct_computation_whatever_the_block_size(fake, block, context, stride):
    fake.block["size"] = block
    s = EvalSettings(texts=[fake.text], context=context, stride=stride, top_k=V, isolate=False, use_cache=False)
    report = evaluate([fake.paths["other"], fake.paths["same"]], fake.paths["source"], s)
    want = direct(fake.text.read_text(), context, stride, 0, 99)
    other, same = (r.summary for r in report.slices)
    assert report.tokens_scored == other.tokens == want["tokens"] == len(fake.text.read_text())
    assert report.source.summary.perplexity == pytest.approx(want["source"], rel=1e-12)
    assert other.perplexity == pytest.approx(want["slice"], rel=1e-12)
    for name in ("kl_mean", "kl_median", "kl_p99"):
        assert getattr(other, name) == pytest.approx(want[name], rel=1e-9)
    assert other.top1_agreement == want["top1"]
    assert (same.kl_mean, same.kl_p99, same.top1_agreement, same.perplexity) == (0.0, 0.0, 1.0, report.source.summary.perplexity)


def test_the_source_runs_once_per_key(fake):
    RUNS.clear()
    s = EvalSettings(texts=[fake.text], context=16, isolate=False, cache_dir=fake.cache)
    first = evaluate([fake.paths["other"], fake.paths["same"]], fake.paths["source"], s)
    second = evaluate([fake.paths["other"]], fake.paths["source"], s)
    assert [p.rsplit("/", 1)[-1] for _, p in RUNS] == ["source", "other", "same", "other"]
    assert second.source.cached and second.slices[0].summary == first.slices[0].summary
    assert second.source.run == first.source.run  # the record of the run that made the cache
    evaluate([fake.paths["other"]], fake.paths["source"], EvalSettings(texts=[fake.text], context=17, isolate=False, cache_dir=fake.cache))
    assert [p.rsplit("/", 1)[-1] for _, p in RUNS][-2:] == ["source", "other"]


def test_a_slice_with_another_vocabulary_is_refused(fake):
    s = EvalSettings(texts=[fake.text], context=16, isolate=False, use_cache=False)
    with pytest.raises(SourceError) as e:
        evaluate([fake.paths["bigger"]], fake.paths["source"], s)
    assert str(e.value) == f"{fake.paths['bigger']} has a vocabulary of 50 tokens, the source {V}: KL and top-1 agreement need the same vocabulary"


def test_a_text_without_tokens_is_refused(fake, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SourceError, match="^the texts hold no token to score$"):
        evaluate([fake.paths["other"]], fake.paths["source"], EvalSettings(texts=[empty], isolate=False))
