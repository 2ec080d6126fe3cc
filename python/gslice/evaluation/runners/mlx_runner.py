"""mlx-lm, for MLX model folders (``mlx_lm.convert`` output), run WITH a KV cache.

Every window is one forward pass from a fresh cache (``mlx_lm.models.cache.make_prompt_cache``).
The cache is not optional for Gemma 3n: mlx-lm's Gemma 3n attention reads the producer layer's
keys and values from the cache only (``if self.is_kv_shared_layer and cache is not None``);
called without one, as ``mlx_lm.perplexity`` does (``model(batch[:, :-1])``), the KV-sharing
layers compute keys and values with their own, unused k/v projections, and the logits are
wrong. docs/evaluation.md has the reading of mlx-lm 0.32.2's code, and
tests/interop/test_eval_runtimes.py shows it on a tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from . import Runner, Tokenizer


class MLXTokenizer(Tokenizer):
    def __init__(self, path: Path):
        from mlx_lm.tokenizer_utils import load as load_tok

        self._tok = load_tok(path)
        self.bos = self._tok.bos_token_id

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False), dtype=np.int32)


class MLXRunner(Runner):
    def __init__(self, path: Path, context: int, threads: int | None):
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load_model

        self._mx, self._make_cache = mx, make_prompt_cache
        self.model, config = load_model(Path(path))
        self.vocab_size = int((config.get("text_config") or config)["vocab_size"])
        self.settings = {"kv_cache": True, "quantization": config.get("quantization")}

    def window_logits(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        mx = self._mx
        cache = self._make_cache(self.model)
        out = self.model(mx.array(np.asarray(tokens, dtype=np.int32))[None], cache=cache)[0]
        yield np.array(out.astype(mx.float32))


def load_tokenizer(path: Path) -> Tokenizer:
    return MLXTokenizer(path)


def load(path: Path, context: int, threads: int | None) -> Runner:
    return MLXRunner(path, context, threads)
