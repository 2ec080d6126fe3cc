"""Running a GGUF file in llama.cpp itself, through llama-cpp-python's C API (its high-level
``Llama`` class does not expose the model parameter we need): logits of a prompt, greedy
decoding with the KV cache, and tokenization.

Extra buffer types are disabled (``use_extra_bufts = False``): on this machine's CPU, llama.cpp
repacks quantized weights for its AMX path and crashes on these tiny models. The KV cache is
f32 (llama.cpp's default is f16) and flash attention off, so that the comparison with
transformers measures the model, not the cache's rounding. llama.cpp's log goes nowhere.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

import llama_cpp as L

GGML_TYPE_F32 = 0


@L.llama_log_callback
def _quiet(level, text, user_data):  # noqa: ARG001
    pass


@contextmanager
def loaded(path: Path, n_ctx: int = 128) -> Iterator[tuple]:
    """(model, context, vocabulary size) of a GGUF file, freed on exit."""
    L.llama_log_set(_quiet, None)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False
    mp.n_gpu_layers = 0
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_ctx
    cp.n_ubatch = n_ctx
    cp.n_threads = cp.n_threads_batch = 2
    cp.type_k = cp.type_v = GGML_TYPE_F32
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        L.llama_model_free(model)
        raise RuntimeError(f"llama.cpp could not create a context for {path}")
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    try:
        yield model, ctx, n_vocab
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


def _decode(ctx, tokens: Sequence[int], start: int, all_logits: bool) -> None:
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
    finally:
        L.llama_batch_free(batch)


def _row(ctx, i: int, n_vocab: int) -> np.ndarray:
    ptr = L.llama_get_logits_ith(ctx, i)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()


def logits(path: Path, tokens: Sequence[int]) -> np.ndarray:
    """[tokens, vocab] logits of one forward pass over the prompt."""
    with loaded(path) as (_, ctx, n_vocab):
        _decode(ctx, tokens, 0, all_logits=True)
        return np.stack([_row(ctx, i, n_vocab) for i in range(len(tokens))])


def greedy(path: Path, tokens: Sequence[int], new_tokens: int) -> list[int]:
    """The prompt followed by ``new_tokens`` greedy tokens, one decode step each (KV cache)."""
    out = list(tokens)
    with loaded(path) as (_, ctx, n_vocab):
        _decode(ctx, tokens, 0, all_logits=False)
        for _ in range(new_tokens):
            nxt = int(np.argmax(_row(ctx, -1, n_vocab)))
            out.append(nxt)
            _decode(ctx, [nxt], len(out) - 1, all_logits=False)
    return out


def tokenize(path: Path, text: str, add_special: bool = True) -> list[int]:
    """llama.cpp's own tokenization of ``text`` with the file's vocabulary."""
    with loaded(path, n_ctx=16) as (model, _, _):
        vocab = L.llama_model_get_vocab(model)
        data = text.encode()
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), add_special, False)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return list(buf[:n])
