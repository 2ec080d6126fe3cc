"""Interop tier: transformers loads bulk outputs on their own (run with `-m interop` where
torch and transformers are installed; imports stay inside the test so that the default tier
collects this file without them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gslice.bulk import prepare_bulk, select_presets, write_bulk
from gslice.testing import E4B_LIKE, read_checkpoint, write_tiny_checkpoint

TOWERS = ("model.audio_tower.", "model.embed_audio.", "model.vision_tower.", "model.embed_vision.")


@pytest.mark.interop
def test_transformers_loads_two_bulk_outputs(tmp_path):
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    src = write_tiny_checkpoint(tmp_path / "src", E4B_LIKE, shards=2)
    presets = select_presets("google-e2b,google-e2.54b-layer")
    write_bulk(prepare_bulk(src, presets, tmp_path / "out"))
    for preset, layers in zip(presets, (30, 35)):
        folder = tmp_path / "out" / preset.slug
        # The tiny checkpoint's vision tower is named like the real one but not shaped like
        # timm's MobileNetV5, so the text model is what transformers can load from it.
        text = json.loads((folder / "config.json").read_text())["text_config"]
        model, info = Gemma3nForCausalLM.from_pretrained(
            folder, config=Gemma3nTextConfig(**text), dtype=torch.bfloat16, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], preset.slug
        assert info["unexpected_keys"] and all(k.startswith(TOWERS) for k in info["unexpected_keys"])
        assert len(model.model.layers) == layers
        stored = read_checkpoint(folder)
        for name, p in model.state_dict().items():
            if name == "lm_head.weight":  # tied to embed_tokens, not stored
                continue
            want = stored["model.language_model." + name.removeprefix("model.")]
            assert np.array_equal(p.view(torch.uint16).numpy(), want), (preset.slug, name)
        logits = model(torch.tensor([[2, 17, 99, 5]])).logits
        assert logits.shape == (1, 4, E4B_LIKE.vocab) and torch.isfinite(logits).all()
