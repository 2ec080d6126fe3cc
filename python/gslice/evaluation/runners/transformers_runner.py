"""transformers: a Hugging Face checkpoint folder in its own dtype, one forward pass per window
without a cache. Only the text model is built (AutoModelForCausalLM with the text config:
Gemma3nForCausalLM, which transformers loads from a multimodal checkpoint's
``model.language_model.*`` tensors too), so the towers of a multimodal checkpoint take no RAM;
its text logits are those of Gemma3nForConditionalGeneration
(tests/interop/test_eval_runtimes.py compares them).

transformers' Gemma 3n passes the keys and values of the KV-producer layers to the sharing
layers inside the forward pass (``shared_kv_states``), so a cacheless pass computes the same
thing as decoding with a cache; ``tests/interop/test_eval_runtimes.py`` checks both."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from . import Runner, Tokenizer


class HFTokenizer(Tokenizer):
    def __init__(self, path: Path):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        self.bos = self._tok.bos_token_id

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok(text, add_special_tokens=False)["input_ids"], dtype=np.int32)


class TransformersRunner(Runner):
    def __init__(self, path: Path, context: int, threads: int | None):
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        transformers.logging.set_verbosity_error()  # the towers' tensors are "unexpected" here, on purpose
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        config = AutoConfig.from_pretrained(path).get_text_config()
        self.model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype="auto").eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.settings = {"dtype": str(self.model.dtype).removeprefix("torch."), "class": type(self.model).__name__}

    def window_logits(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
            out = self.model(input_ids=ids, use_cache=False).logits[0]
            yield out.float().numpy()


def load_tokenizer(path: Path) -> Tokenizer:
    return HFTokenizer(path)


def load(path: Path, context: int, threads: int | None) -> Runner:
    return TransformersRunner(path, context, threads)
