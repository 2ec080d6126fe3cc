"""Issue 5 against transformers: outputs without towers load as the right class and compute the
full model's text logits; an audio-sliced output runs the audio encoder of a module-level slice.

What transformers (5.x) does with a tower-less multimodal checkpoint: ``Gemma3nModel.__init__``
always builds ``vision_tower``, ``audio_tower``, ``embed_vision`` and ``embed_audio`` from the
config's ``vision_config`` / ``audio_config``, so the dropped tower is rebuilt and its weights,
absent from the checkpoint, are initialised by ``_init_weights`` and listed as missing keys
(with a warning). Loading succeeds and text is unaffected; the rebuilt tower is untrained.
The config must keep both sub-configs: without them transformers falls back to the default
``Gemma3nVisionConfig`` / ``Gemma3nAudioConfig``, i.e. a full-size MobileNetV5-300M and a
12-block 1536-wide Conformer, both untrained. Only ``--text-only`` (``Gemma3nForCausalLM``,
which has no towers) removes the towers from memory as well as from disk: for a multimodal
checkpoint, even ``AutoModelForCausalLM`` returns ``Gemma3nForConditionalGeneration``.
"""

from __future__ import annotations

import pytest
import torch

import gslice

from .conftest import CONTROL_MIN, TOLERANCE
from .tiny_gemma3n import (
    AutoModelForCausalLM,
    Gemma3nForCausalLM,
    Gemma3nForConditionalGeneration,
    audio_inputs,
    audio_prompt,
    greedy,
    image_inputs,
    image_prompt,
    load,
    load_with_info,
    logits,
    max_abs_diff,
    module_slice,
)

pytestmark = pytest.mark.interop

VISION = ("model.vision_tower.", "model.embed_vision.")
AUDIO = ("model.audio_tower.", "model.embed_audio.")
AUDIO_SKIP = (1, 8, 9, 10, 11)


def _state_names(model, prefixes) -> set[str]:
    return {n for n in model.state_dict() if n.startswith(prefixes)}


def _audio_logits(model):
    features, mask = audio_inputs()
    return logits(model, audio_prompt(), input_features=features, input_features_mask=mask)


def _image_logits(model):
    return logits(model, image_prompt(), pixel_values=image_inputs())


# -- --text-only ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_only(e4b_like, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-only") / "out"
    gslice.slice_model(e4b_like.path, out, text_only=True)
    return out


def test_text_only_loads_as_the_causal_lm_class(text_only, e4b_like):
    assert type(AutoModelForCausalLM.from_pretrained(text_only)) is Gemma3nForCausalLM
    # whereas for a multimodal checkpoint it gives the multimodal class, towers and all
    assert type(AutoModelForCausalLM.from_pretrained(e4b_like.path)) is Gemma3nForConditionalGeneration
    model, info = load_with_info(text_only, Gemma3nForCausalLM)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    assert not any(n.startswith(("model.vision", "model.audio", "model.embed_vision", "model.embed_audio")) for n in model.state_dict())


def test_text_only_computes_the_full_models_text_logits(e4b_like, text_only, record):
    model = load(text_only, Gemma3nForCausalLM)
    diff = record("text_only", max_abs_diff(logits(model), logits(e4b_like.model)))
    assert diff <= TOLERANCE
    assert torch.equal(greedy(model), greedy(e4b_like.model))


def test_text_only_with_a_block_skip_matches_the_module_slice(e4b_like, tmp_path, record):
    skip = tuple(range(10, 15))
    gslice.slice_model(e4b_like.path, tmp_path / "out", text_only=True, layers_to_skip=skip, ffn_dims=32)
    model = load(tmp_path / "out", Gemma3nForCausalLM)
    oracle = module_slice(e4b_like.model, skip, 32)
    assert record("text_only_e2b_block_skip", max_abs_diff(logits(model), logits(oracle))) <= TOLERANCE
    assert torch.equal(greedy(model), greedy(oracle))


# -- --drop-vision / --drop-audio -------------------------------------------------------------

DROPS = {
    # flag: (what goes, what stays, the other modality's logits that must still match)
    "drop_vision": (VISION, AUDIO, _audio_logits),
    "drop_audio": (AUDIO, VISION, _image_logits),
}


@pytest.fixture(scope="module", params=list(DROPS))
def dropped(request, e4b_like, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "out"
    gslice.slice_model(e4b_like.path, out, **{request.param: True})
    model, info = load_with_info(out)
    return request.param, model, info


def test_a_towerless_output_loads_with_exactly_that_tower_missing(dropped, e4b_like):
    flag, model, info = dropped
    gone, kept, _ = DROPS[flag]
    assert type(model) is Gemma3nForConditionalGeneration
    assert info["missing_keys"] == _state_names(e4b_like.model, gone)
    assert (info["unexpected_keys"], info["mismatched_keys"]) == (set(), set())
    assert _state_names(model, kept) == _state_names(e4b_like.model, kept)


def test_a_towerless_output_computes_the_full_models_logits(dropped, e4b_like, record):
    flag, model, _ = dropped
    _, _, other_modality = DROPS[flag]
    assert record(flag, max_abs_diff(logits(model), logits(e4b_like.model))) <= TOLERANCE
    assert torch.equal(greedy(model), greedy(e4b_like.model))
    # the tower that stays still works: a prompt with its soft tokens gives the full model's logits
    assert record(f"{flag}_other_modality", max_abs_diff(other_modality(model), other_modality(e4b_like.model))) <= TOLERANCE


# -- --audio-layers-to-skip ------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_sliced(e4b_like, tmp_path_factory):
    out = tmp_path_factory.mktemp("audio") / "out"
    gslice.slice_model(e4b_like.path, out, audio_layers_to_skip=AUDIO_SKIP)
    model, info = load_with_info(out)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    return model, module_slice(e4b_like.model, audio_blocks_to_skip=AUDIO_SKIP)


@torch.no_grad()
def _encode(model):
    features, mask = audio_inputs()
    # the encoder's mask marks padding; the model's forward takes a validity mask and inverts it
    return model.model.audio_tower(features, ~mask).last_hidden_state


def test_audio_sliced_encoder_matches_the_module_slice(audio_sliced, e4b_like, record, control):
    model, oracle = audio_sliced
    assert len(model.model.audio_tower.conformer) == len(oracle.model.audio_tower.conformer) == 12 - len(AUDIO_SKIP)
    got = _encode(model)
    assert record("audio_blocks_encoder", max_abs_diff(got, _encode(oracle))) <= TOLERANCE
    assert control("unsliced_vs_audio_blocks_encoder", max_abs_diff(got, _encode(e4b_like.model))) > CONTROL_MIN


def test_audio_sliced_model_logits_with_audio_match_the_module_slice(audio_sliced, record):
    model, oracle = audio_sliced
    assert record("audio_blocks_logits", max_abs_diff(_audio_logits(model), _audio_logits(oracle))) <= TOLERANCE
