"""llama.cpp through llama-cpp-python's bindings of llama.h, for GGUF files.

The model is memory-mapped (llama.cpp's default), so a model larger than free RAM is paged in
from disk rather than refused. Extra buffer types are disabled (``use_extra_bufts = False``):
on CPUs with AMX, llama.cpp 0.3.36's repacking path crashes on quantized Gemma 3n GGUFs
(issue 13), and the plain CPU path computes the same logits.

Every other setting is llama.cpp's default, as its own tools use it: an f16 KV cache, and flash
attention "auto", which llama.cpp resolves to enabled on the CPU.

Logits for every position: each window is decoded from an empty KV cache in batches of
``BATCH`` tokens with the logits flag set on every token, and each batch's logits
[rows, V] are read straight from llama.cpp's output buffer. (``Llama(logits_all=True)`` would
also give them, but keeps a second n_ctx x V float32 copy: 512 MB for Gemma 3n at context 512.)
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import SourceError
from . import Runner, Tokenizer

BATCH = 64  # tokens per llama_decode: llama.cpp's output buffer is BATCH x V floats (67 MB for Gemma 3n)

_log_lines: list[str] = []


def _bindings():
    import llama_cpp

    if not getattr(_bindings, "ready", False):
        # Keep llama.cpp's log (it writes to stderr by default) for error messages instead.
        @llama_cpp.llama_log_callback
        def collect(level, text, _user):
            if level >= 2 and text:  # warnings and errors
                _log_lines.append(text.decode("utf-8", "replace").strip())
                del _log_lines[:-20]

        _bindings.callback = collect  # the C side holds a pointer: keep the object alive
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _bindings.ready = True
    return llama_cpp


def _load_model(path: Path, vocab_only: bool):
    lc = _bindings()
    params = lc.llama_model_default_params()
    params.use_extra_bufts = False
    params.load_mode = lc.LLAMA_LOAD_MODE_MMAP
    params.vocab_only = vocab_only
    _log_lines.clear()
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        # llama.cpp's own reason ("error loading model: ...") comes before the generic last line
        why = next((line.split("error loading model: ", 1)[1] for line in _log_lines if "error loading model: " in line),
                   _log_lines[-1] if _log_lines else "no reason given")
        raise SourceError(f"llama.cpp cannot load {path}: {why}")
    return model


class LlamaTokenizer(Tokenizer):
    def __init__(self, path: Path):
        lc = _bindings()
        self._lc = lc
        self._model = _load_model(path, vocab_only=True)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.bos = int(lc.llama_vocab_bos(self._vocab))

    def encode(self, text: str) -> np.ndarray:
        data = text.encode("utf-8")
        n = len(data) + 8
        while True:
            buf = (self._lc.llama_token * n)()
            got = self._lc.llama_tokenize(self._vocab, data, len(data), buf, n, False, False)
            if got >= 0:
                return np.frombuffer(buf, dtype=np.int32, count=got).copy()
            n = -got

    def __del__(self):
        if getattr(self, "_model", None):
            self._lc.llama_model_free(self._model)
            self._model = None


class LlamaRunner(Runner):
    def __init__(self, path: Path, context: int, threads: int | None):
        lc = _bindings()
        self._lc = lc
        self._model = _load_model(path, vocab_only=False)
        cp = lc.llama_context_default_params()
        cp.n_ctx = context
        cp.n_batch = cp.n_ubatch = min(BATCH, context)
        if threads:
            cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise SourceError(f"llama.cpp cannot create a context of {context} tokens for {path}")
        self.vocab_size = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model)))
        self._batch = lc.llama_batch_init(cp.n_batch, 0, 1)
        self._n_batch = cp.n_batch
        self.settings = {"batch": self._n_batch, "use_extra_bufts": False, "flash_attn": "auto (llama.cpp's default)"}

    def window_logits(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        lc, b = self._lc, self._batch
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        for a in range(0, len(tokens), self._n_batch):
            chunk = tokens[a : a + self._n_batch]
            for j, t in enumerate(chunk):
                b.token[j] = int(t)
                b.pos[j] = a + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = 1
            b.n_tokens = len(chunk)
            rc = lc.llama_decode(self._ctx, b)
            if rc != 0:
                raise SourceError(f"llama.cpp could not decode a batch (llama_decode returned {rc})")
            yield np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(len(chunk), self.vocab_size))

    def close(self) -> None:
        lc = self._lc
        if getattr(self, "_batch", None) is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None


def load_tokenizer(path: Path) -> Tokenizer:
    return LlamaTokenizer(path)


def load(path: Path, context: int, threads: int | None) -> Runner:
    return LlamaRunner(path, context, threads)
