"""`gslice eval` against independent computations, in each runtime.

For every runtime the test tokenizes the text with the source's tokenizer itself, cuts the
windows by the rule docs/evaluation.md states (written out again in eval_reference.py, not
imported from gslice), gets the logits from the runtime through its own public API (not
gslice's runner), and computes perplexity, the full-vocabulary KL(source || slice) and top-1
agreement in numpy. With top_k = V (320) gslice's KL is the full KL, so all figures must agree
to float64 rounding (relative 1e-9): both sides read the same float32 logits. At the default
top_k = 32 the KL is the stated lower bound; test_top_k_error_on_model_outputs measures how far
below. test_eval_outputs.py does the same for gslice's own GGUF and MLX outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gslice.evaluation import EvalSettings, evaluate
from gslice.evaluation.run import RUNS

from .eval_reference import CONTEXT, MAX_TOKENS, STRIDE, assert_figures, llama_logits, mlx_logits, reference, windows_by_rule
from .tiny_text_models import VOCAB


def settings(texts, tmp_path, **kw) -> EvalSettings:
    base = dict(texts=[str(t) for t in texts], context=CONTEXT, stride=STRIDE, max_tokens=MAX_TOKENS,
                threads=1, cache_dir=tmp_path / "cache", isolate=False)
    return EvalSettings(**{**base, **kw})


# -- per runtime ------------------------------------------------------------------------


def hf_logits(path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def run(tokens):
        with torch.no_grad():
            return model(input_ids=torch.tensor(np.asarray(tokens, np.int64))[None], use_cache=False).logits[0].numpy()

    return run


def hf_ids(path, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [tok(t.read_text(), add_special_tokens=False)["input_ids"] for t in texts], tok.bos_token_id


def test_transformers_figures_equal_numpy_on_transformers_logits(runtime_models, tmp_path):
    m, texts = runtime_models, [runtime_models.texts["a"], runtime_models.texts["b"]]
    report = evaluate([m.hf["mild"], m.hf["wrong"]], m.hf["source"], settings(texts, tmp_path, top_k=VOCAB))
    ids, bos = hf_ids(m.hf["source"], texts)
    windows = windows_by_rule(ids, bos, CONTEXT, STRIDE, MAX_TOKENS)
    src = hf_logits(m.hf["source"])
    for i, name in enumerate(("mild", "wrong")):
        assert_figures(report, i, reference(windows, src, hf_logits(m.hf[name])))
    assert report.slices[0].run.runtime.startswith("transformers 5.23.0")


def test_llamacpp_figures_equal_numpy_on_llamacpp_logits(runtime_models, tmp_path):
    m, texts = runtime_models, [runtime_models.texts["a"], runtime_models.texts["b"]]
    report = evaluate([m.gguf["mild"], m.gguf["wrong"]], m.gguf["source"], settings(texts, tmp_path, top_k=VOCAB))
    src, llm = llama_logits(m.gguf["source"])
    ids = [llm.tokenize(t.read_text().encode(), add_bos=False) for t in texts]
    windows = windows_by_rule(ids, llm.token_bos(), CONTEXT, STRIDE, MAX_TOKENS)
    for i, name in enumerate(("mild", "wrong")):
        assert_figures(report, i, reference(windows, src, llama_logits(m.gguf[name])[0]))
    assert report.source.run.runtime == "llama.cpp (llama-cpp-python 0.3.36)"


def test_mlx_figures_equal_numpy_on_mlx_logits_with_a_kv_cache(runtime_models, tmp_path):
    m, texts = runtime_models, [runtime_models.texts["a"]]
    report = evaluate([m.mlx["wrong"]], m.mlx["source"], settings(texts, tmp_path, top_k=VOCAB))
    src, tok = mlx_logits(m.mlx["source"])
    ids = [tok.encode(t.read_text(), add_special_tokens=False) for t in texts]
    windows = windows_by_rule(ids, tok.bos_token_id, CONTEXT, STRIDE, MAX_TOKENS)
    assert_figures(report, 0, reference(windows, src, mlx_logits(m.mlx["wrong"])[0]))
    assert report.source.run.runtime == "mlx-lm 0.32.2 (mlx 0.32.4)"


# -- facts every runtime must show --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "gguf", "mlx"])
def test_the_source_against_itself_gives_kl_zero_and_the_same_perplexity(runtime_models, tmp_path, fmt):
    src = getattr(runtime_models, fmt)["source"]
    report = evaluate([src], src, settings([runtime_models.texts["a"]], tmp_path))
    s, ref = report.slices[0].summary, report.source.summary
    assert (s.kl_mean, s.kl_median, s.kl_p99, s.top1_agreement) == (0.0, 0.0, 0.0, 1.0)
    assert s.perplexity == ref.perplexity


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_a_wrong_slice_gives_a_large_kl(runtime_models, tmp_path, fmt):
    models = getattr(runtime_models, fmt)
    report = evaluate([models["mild"], models["wrong"]], models["source"], settings([runtime_models.texts["a"]], tmp_path))
    mild, wrong = (r.summary for r in report.slices)
    assert wrong.kl_mean > 1.0 and wrong.kl_mean > 20 * mild.kl_mean
    assert wrong.top1_agreement < 0.5 < mild.top1_agreement


def test_top_k_error_on_model_outputs(runtime_models, tmp_path):
    """The default top-32 KL against the full one (top_k = V) on the same outputs: never above
    it, and on these peaked tiny models (the source leaves 0.09% of its probability outside its
    top-32, mean per token) within 1% of it in the mean (measured: 0.32% below for 'mild', 0.15%
    for 'wrong'). tests/test_eval_metrics.py measures the gap on flatter distributions."""
    m = runtime_models
    full = evaluate([m.hf["mild"], m.hf["wrong"]], m.hf["source"], settings([m.texts["a"]], tmp_path, top_k=VOCAB, use_cache=False))
    top = evaluate([m.hf["mild"], m.hf["wrong"]], m.hf["source"], settings([m.texts["a"]], tmp_path, use_cache=False))
    assert top.source.summary.source_tail < 0.005
    for f, t in zip(full.slices, top.slices):
        assert t.summary.kl_mean <= f.summary.kl_mean
        assert t.summary.kl_mean >= 0.99 * f.summary.kl_mean


# -- the source cache -------------------------------------------------------------------


def source_runs():
    return sum(1 for rt, path in RUNS if path.endswith("source.gguf"))


def test_the_source_runs_once_for_several_slices_and_again_only_when_text_or_context_change(runtime_models, tmp_path):
    m, a, b = runtime_models, runtime_models.texts["a"], runtime_models.texts["b"]
    RUNS.clear()
    first = evaluate([m.gguf["mild"], m.gguf["wrong"]], m.gguf["source"], settings([a], tmp_path))
    assert (source_runs(), len(RUNS)) == (1, 3) and not first.source.cached
    again = evaluate([m.gguf["wrong"]], m.gguf["source"], settings([a], tmp_path))
    assert (source_runs(), len(RUNS)) == (1, 4) and again.source.cached
    assert again.slices[0].summary == first.slices[1].summary  # same figures from the cached rows
    evaluate([m.gguf["mild"]], m.gguf["source"], settings([b], tmp_path))  # another text
    assert source_runs() == 2
    evaluate([m.gguf["mild"]], m.gguf["source"], settings([a], tmp_path, context=CONTEXT + 8))  # another context
    assert source_runs() == 3
    edited = tmp_path / "edited" / a.name
    edited.parent.mkdir()
    edited.write_text(a.read_text().replace("Bennet", "Bennett"))  # same name, other text
    evaluate([m.gguf["mild"]], m.gguf["source"], settings([edited], tmp_path))
    assert source_runs() == 4
    evaluate([m.gguf["mild"]], m.gguf["source"], settings([a], tmp_path))  # back to the first: cached
    assert source_runs() == 4
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4


# -- the command, as a user runs it (each model in a process of its own) -------------------


def test_gslice_eval_command_runs_each_model_in_its_own_process(runtime_models, tmp_path):
    m = runtime_models
    cmd = [sys.executable, "-m", "gslice", "eval", str(m.gguf["wrong"]), "--against", str(m.gguf["source"]),
           "--text", str(m.texts["a"]), "--context", "64", "--max-tokens", "200", "--threads", "1",
           "--cache-dir", str(tmp_path / "cache"), "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    r = json.loads(first.stdout)
    assert r["tokens_scored"] == 200 and r["context"] == 64 and r["stride"] == 63 and r["windows"] == 4
    assert r["source"]["cached"] is False and r["slices"][0]["run"]["isolated"] is True
    for model in (r["source"], r["slices"][0]):
        assert model["run"]["peak_rss_bytes"] > 20_000_000 and model["run"]["tokens_per_second"] > 0
        assert model["run"]["tokens_processed"] == 204  # 200 text tokens + BOS in each of 4 windows
    second = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert second["source"]["cached"] is True
    assert second["slices"][0]["kl_mean"] == r["slices"][0]["kl_mean"]
    table = subprocess.run(cmd[:-1], capture_output=True, text=True, check=True).stdout
    assert table.splitlines()[0].split() == ["model", "runtime", "perplexity", "KL", "mean", "KL", "median", "KL", "p99",
                                             "top-1", "agree", "tokens/s", "peak", "RSS"]
    assert f"{m.gguf['source']} (source, cached)" in table
    assert "Measured on chapter-1.txt: 200 tokens scored (context 64, stride 63, 4 windows)." in table


def test_a_script_calling_evaluate_at_top_level_runs_once(runtime_models, tmp_path):
    """Isolated runs start a fresh interpreter on gslice's worker, never the caller's script
    again (as multiprocessing's spawn would, without an `if __name__ == "__main__"` guard)."""
    m = runtime_models
    script = tmp_path / "measure.py"
    script.write_text(
        "import gslice\n"
        "print('script ran')\n"
        f"r = gslice.evaluate([{str(m.gguf['wrong'])!r}], {str(m.gguf['source'])!r}, gslice.EvalSettings("
        f"texts=[{str(m.texts['a'])!r}], context=32, max_tokens=40, threads=1, use_cache=False))\n"
        "print(r.slices[0].run.isolated, r.tokens_scored)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "script ran\nTrue 40\n"


def test_a_damaged_gguf_is_one_line_from_the_child_process_too(runtime_models, tmp_path):
    m = runtime_models
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(m.gguf["wrong"].read_bytes()[:100_000])
    cmd = [sys.executable, "-m", "gslice", "eval", str(cut), "--against", str(m.gguf["source"]), "--max-tokens", "20",
           "--no-cache", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.endswith(f"error: llama.cpp cannot load {cut}: tensor 'altup_unembd_proj.weight' data is not within "
                                "the file bounds, model is corrupted or incomplete\n")
