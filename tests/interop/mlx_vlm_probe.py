"""The mlx-vlm half of ``mlx_probe vlm``: run with the Python of a venv holding mlx-vlm (which
pins its own transformers), on folders that ``mlx_probe`` prepared. Imports no torch and no
gslice. Usage: ``python mlx_vlm_probe.py FOLDER...``; each FOLDER holds a gslice slice and
``oracle.npy``, transformers' logits of the module-level slice for ``prompt.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np


def text_model_logits(folder: Path, prompt: list[int]) -> np.ndarray:
    """mlx-vlm's Gemma 3n language model alone (the towers of the tiny models are not the
    published MobileNet-V5 / Conformer ones mlx-vlm builds), with its KV cache."""
    from mlx_vlm.models.gemma3n.config import TextConfig
    from mlx_vlm.models.gemma3n.language import LanguageModel

    text = json.loads((folder / "config.json").read_text())["text_config"]
    model = LanguageModel(TextConfig.from_dict(text))
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    prefix = "model.language_model."
    weights = {"model." + k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    model.load_weights(list(weights.items()), strict=True)
    out = model(mx.array([prompt]), cache=model.make_cache())
    return np.array(out.logits.astype(mx.float32))


def correct_shared_query_offset() -> None:
    """Diagnosis, not a fix to ship: a KV-sharing layer of mlx-vlm 0.7.10 rotates its queries
    at ``cache.offset`` of the producer's cache, which the producer has already advanced by the
    L tokens of this forward pass (mlx-lm fixed the same thing in its own copy: one offset for
    the whole pass). Moving it back by L should make mlx-vlm agree with transformers."""
    from mlx_vlm.models.gemma3n import language

    shipped = language.Gemma3nAttention.__call__

    class Behind:
        def __init__(self, cache, n):
            self._cache, self._n = cache, n

        def __getattr__(self, name):
            return getattr(self._cache, name)

        @property
        def offset(self):
            return self._cache.offset - self._n

    def call(self, x, mask=None, cache=None):
        if self.is_kv_shared_layer and cache is not None:
            cache = Behind(cache, x.shape[1])
        return shipped(self, x, mask, cache)

    language.Gemma3nAttention.__call__ = call


def main(folders: list[str]) -> None:
    import mlx_vlm

    print(f"  mlx-vlm {mlx_vlm.__version__}, mlx {mx.__version__}")
    for f in map(Path, folders):
        prompt = json.loads((f / "prompt.json").read_text())
        try:
            from mlx_vlm import load

            load(str(f))
            whole = "loads"
        except Exception as e:  # noqa: BLE001 - reporting what the runtime says
            whole = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        try:
            diff = np.abs(text_model_logits(f, prompt) - np.load(f / "oracle.npy")).max()
            text = f"max |mlx-vlm - transformers| {diff:.2e}"
        except Exception as e:  # noqa: BLE001
            text = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"  {f.name}: mlx_vlm.load of the folder: {whole}; text model alone: {text}")
    correct_shared_query_offset()
    for f in map(Path, folders):
        prompt = json.loads((f / "prompt.json").read_text())
        try:
            diff = np.abs(text_model_logits(f, prompt) - np.load(f / "oracle.npy")).max()
            print(f"  {f.name}, shared layers' query offset moved back by the prompt length: max |mlx-vlm - transformers| {diff:.2e}")
        except Exception as e:  # noqa: BLE001
            print(f"  {f.name}, shared layers' query offset moved back: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main(sys.argv[1:])
