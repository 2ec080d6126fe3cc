"""What gslice eval's runners rely on in each runtime, checked on tiny models:

* transformers: the text model alone (what the runner builds) computes the multimodal model's
  text logits, and one cacheless forward pass equals decoding the same tokens with a cache
  (transformers hands the producer layers' K/V to the sharing layers inside the pass);
* mlx-lm 0.32.2: with a KV cache, Gemma 3n's logits equal transformers'; without one - the way
  ``mlx_lm.perplexity`` calls the model, ``model(batch[:, :-1])`` - the KV-sharing layers
  compute their own keys and values and the logits are wrong (docs/evaluation.md);
* llama.cpp: the runner's batched logits equal llama-cpp-python's ``Llama(logits_all=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gslice.evaluation.runners import llamacpp_runner, mlx_runner, transformers_runner

from .tiny_gemma3n import PROMPT

IDS = np.array([2] + list(range(10, 70)), dtype=np.int32)  # 61 tokens: many sliding windows of 8


def runner_logits(runner, tokens=IDS) -> np.ndarray:
    return np.concatenate([np.array(block) for block in runner.window_logits(tokens)])


def test_the_text_model_alone_computes_the_multimodal_models_text_logits(e4b_like):
    runner = transformers_runner.load(e4b_like.path, 64, 1)
    assert runner.settings["class"] == "Gemma3nForCausalLM"
    ids = np.array(PROMPT, np.int32)
    with torch.no_grad():
        full = e4b_like.model(input_ids=torch.tensor(ids[None].astype(np.int64)), use_cache=False).logits[0].numpy()
    assert np.array_equal(runner_logits(runner, ids), full)


def test_a_cacheless_pass_equals_decoding_with_a_cache_in_transformers(runtime_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runtime_models.hf["source"], dtype=torch.float32).eval()
    ids = torch.tensor(IDS.astype(np.int64))[None]
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits[0]
        out = model(input_ids=ids[:, :20], use_cache=True)
        steps, cache = [out.logits[0]], out.past_key_values
        for i in range(20, ids.shape[1]):
            out = model(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits[0])
            cache = out.past_key_values
    steps = torch.cat(steps)
    # float32 in another order (one token at a time): measured 6.6e-5 at most, on logits up to 25 (standard deviation 7.7)
    assert (whole - steps).abs().max() < 2e-3 and (whole.argmax(1) == steps.argmax(1)).all()


def test_mlx_lm_needs_its_kv_cache_for_gemma_3n(runtime_models):
    import mlx.core as mx

    hf = runner_logits(transformers_runner.load(runtime_models.hf["source"], 64, 1))
    runner = mlx_runner.load(runtime_models.mlx["source"], 64, 1)
    with_cache = runner_logits(runner)
    without = np.array(runner.model(mx.array(IDS)[None])[0].astype(mx.float32))  # as mlx_lm.perplexity calls it
    assert np.abs(with_cache - hf).max() < 2e-3  # measured 1.1e-4 (float32, other kernels, logits up to 25)
    assert (with_cache.argmax(1) == hf.argmax(1)).all()
    assert np.abs(without - hf).max() > 0.5  # measured 10.9
    assert (without.argmax(1) != hf.argmax(1)).mean() > 0.2  # measured 44% of positions


def test_the_llamacpp_runner_reads_the_logits_llama_cpp_python_gives(runtime_models):
    from llama_cpp import Llama

    path = runtime_models.gguf["source"]
    runner = llamacpp_runner.load(path, 96, 1)
    try:
        got = runner_logits(runner)
        assert got.shape == (len(IDS), runner.vocab_size) and runner.settings["use_extra_bufts"] is False
        again = runner_logits(runner)  # the next window starts from an empty cache
    finally:
        runner.close()
    llm = Llama(str(path), n_ctx=96, n_batch=64, n_ubatch=64, n_threads=1, n_threads_batch=1, logits_all=True,
                flash_attn=True, verbose=False)
    llm.eval([int(t) for t in IDS])
    assert np.array_equal(got, llm.scores[: len(IDS)]) and np.array_equal(got, again)


def test_each_runtime_tokenizes_the_sample_as_the_sentencepiece_model_does(runtime_models):
    import sentencepiece as spm

    from gslice.evaluation.texts import sample_text

    text = sample_text().text
    sp = spm.SentencePieceProcessor(model_file=str(Path(runtime_models.hf["source"]) / "tokenizer.model"))
    want = sp.encode(text)
    for mod, path in ((transformers_runner, runtime_models.hf["source"]), (llamacpp_runner, runtime_models.gguf["source"]),
                      (mlx_runner, runtime_models.mlx["source"])):
        tok = mod.load_tokenizer(path)
        assert tok.bos == 2 and tok.encode(text).tolist() == want, mod.__name__
