"""Audio encoder slicing and tower removal (issue 5): bytes against the numpy reference,
tensor names and config for each option, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gslice
from gslice.testing import compare_to_reference, read_checkpoint

from conftest import hidden_leftovers, read_json


def test_audio_blocks_dropped_and_renumbered(tmp_path, e4b):
    out = tmp_path / "out"
    report = gslice.slice_model(e4b, out, audio_layers_to_skip=[1, 8, 9, 10, 11])
    assert compare_to_reference(e4b, out, audio_layers_to_skip=[1, 8, 9, 10, 11]) == []
    s, o = read_checkpoint(e4b), read_checkpoint(out)
    # source block 2 is output block 1; blocks 7.. do not exist any more
    for suffix in ("lconv1d.depthwise_conv1d.weight", "ffw_layer_start.ffw_layer_1.weight", "attention.attn.per_dim_scale"):
        assert np.array_equal(o[f"model.audio_tower.conformer.1.{suffix}"], s[f"model.audio_tower.conformer.2.{suffix}"])
    assert not any(n.startswith("model.audio_tower.conformer.7.") for n in o)
    assert read_json(out / "config.json")["audio_config"]["conf_num_hidden_layers"] == 7
    assert report.audio_blocks == 7


def test_audio_and_text_slicing_together(tmp_path, e4b):
    out = tmp_path / "out"
    gslice.slice_model(e4b, out, layers_to_skip=range(20, 25), ffn_dims=32, audio_layers_to_skip=[10, 11])
    spec = dict(layers_to_skip=list(range(20, 25)), widths=[32] * 30, audio_layers_to_skip=[10, 11])
    assert compare_to_reference(e4b, out, **spec) == []


@pytest.mark.parametrize(
    "flags,gone,kept",
    [
        (dict(drop_vision=True), ("model.vision_tower.", "model.embed_vision."), ("model.audio_tower.", "model.embed_audio.")),
        (dict(drop_audio=True), ("model.audio_tower.", "model.embed_audio."), ("model.vision_tower.", "model.embed_vision.")),
    ],
    ids=["drop_vision", "drop_audio"],
)
def test_dropping_one_tower(tmp_path, e4b, flags, gone, kept):
    out = tmp_path / "out"
    gslice.slice_model(e4b, out, **flags)
    assert compare_to_reference(e4b, out, **flags) == []
    names = read_checkpoint(out)
    assert not any(n.startswith(gone) for n in names)
    assert any(n.startswith(kept[0]) for n in names) and any(n.startswith(kept[1]) for n in names)
    # still a multimodal checkpoint: the config is unchanged apart from nothing
    assert read_json(out / "config.json") == read_json(e4b / "config.json")


def test_text_only_is_a_causal_lm_checkpoint(tmp_path, e4b):
    out = tmp_path / "out"
    gslice.slice_model(e4b, out, text_only=True, layers_to_skip=[21])
    assert compare_to_reference(e4b, out, drop_vision=True, drop_audio=True, layers_to_skip=[21]) == []
    names = read_checkpoint(out)
    assert all(n.startswith("model.") and not n.startswith("model.language_model.") for n in names)
    assert "model.embed_tokens.weight" in names and "model.layers.33.mlp.up_proj.weight" in names
    assert not any(n.startswith(("model.audio_tower", "model.vision_tower", "model.embed_audio", "model.embed_vision")) for n in names)
    config = read_json(out / "config.json")
    source_text = read_json(e4b / "config.json")["text_config"]
    assert config["model_type"] == "gemma3n_text"
    assert config["architectures"] == ["Gemma3nForCausalLM"]
    assert config["num_hidden_layers"] == 34 and len(config["layer_types"]) == 34
    assert config["hidden_size"] == source_text["hidden_size"]
    assert "text_config" not in config and "audio_config" not in config
    assert not (out / "processor_config.json").exists()
    assert (out / "tokenizer_config.json").exists()


def test_a_text_only_checkpoint_can_be_sliced_again(tmp_path, e4b):
    first, second = tmp_path / "first", tmp_path / "second"
    gslice.slice_model(e4b, first, text_only=True)
    gslice.slice_model(first, second, layers_to_skip=range(20, 25), ffn_dims=32)
    direct = tmp_path / "direct"
    gslice.slice_model(e4b, direct, text_only=True, layers_to_skip=range(20, 25), ffn_dims=32)
    a, b = read_checkpoint(second), read_checkpoint(direct)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_text_only_saves_the_tower_bytes(tmp_path, e4b):
    full = gslice.slice_model(e4b, tmp_path / "full")
    text = gslice.slice_model(e4b, tmp_path / "text", text_only=True)
    assert text.params["audio"] == text.params["vision"] == 0
    assert full.params["total"] - text.params["total"] == full.params["audio"] + full.params["vision"]
    assert text.params["effective"] == full.params["effective"]


AUDIO_REFUSALS = [
    (
        ["--audio-layers-to-skip", "12-15"],
        "audio_layers_to_skip: 12 is out of range: the source's audio encoder has 12 Conformer blocks (0-11). "
        "Proposals assuming 16 blocks with a 4096-wide FFN describe a different encoder: Gemma 3n's has 12 blocks "
        "with FFN width 64 (4 x hidden size)",
    ),
    (["--audio-layers-to-skip", "0-11"], "audio_layers_to_skip: all 12 audio blocks are skipped; use --drop-audio instead"),
    (["--audio-layers-to-skip", "3,3"], "audio_layers_to_skip: 3 is listed twice"),
    (
        ["--audio-layers-to-skip", "3", "--drop-audio"],
        "audio_layers_to_skip: the audio tower is being dropped, so there is nothing to slice",
    ),
    (
        ["--audio-ffn-dim", "3072"],
        "audio FFN width 3072: not expressible: transformers builds every Conformer FFN as 4 x hidden_size "
        "(6144 in Gemma 3n's 1536-wide encoder) with no config field for it, so a narrower one loads nowhere",
    ),
]


@pytest.mark.parametrize("args,message", AUDIO_REFUSALS, ids=[m[:40] for _, m in AUDIO_REFUSALS])
def test_audio_refusals(cli, e4b, tmp_path, args, message):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, *args)
    assert (result.code, result.err) == (2, f"error: {message}\n")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_audio_skip_on_a_source_without_audio(cli, tmp_path, e4b):
    text = tmp_path / "text"
    gslice.slice_model(e4b, text, text_only=True)
    out = tmp_path / "out"
    result = cli("slice", text, "-o", out, "--audio-layers-to-skip", "3")
    assert (result.code, result.err) == (2, "error: audio_layers_to_skip: the source has no audio tower\n")


def test_info_shows_tower_sizes(cli, e4b, tmp_path):
    d = json.loads(cli("info", e4b, "--json").out)
    shapes = read_checkpoint(e4b)
    audio = sum(a.size for n, a in shapes.items() if n.startswith(("model.audio_tower.", "model.embed_audio.")))
    assert d["towers"]["audio"]["params"] == audio
    assert d["towers"]["audio"]["bytes"] == 2 * audio


def test_readme_tower_sizes_match_the_published_layout():
    """The README's tower table, recomputed from the published E4B tensor list."""
    import re
    from pathlib import Path

    from gslice import plan
    from gslice.gemma3n import published_layout

    sizes = {n: int(np.prod(s)) for n, s in published_layout().items()}
    vision = sum(v for n, v in sizes.items() if n.startswith(("model.vision_tower.", "model.embed_vision.")))
    audio = sum(v for n, v in sizes.items() if n.startswith(("model.audio_tower.", "model.embed_audio.")))
    total = sum(sizes.values())
    assert (vision, audio, total) == (298_587_456, 684_694_048, 7_849_978_192)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"{vision:,} parameters" in readme and f"{audio:,}." in readme
    text_only = plan(None, preset="google-main", modalities="text")
    assert text_only.params.total == total - vision - audio
    bf16 = next(f for f in text_only.footprints if f.scheme == "bf16")
    assert bf16.disk_bytes == 2 * (total - vision - audio)
    row = re.search(r"\| `google-main --text-only` \| ([\d.]+)B \| ([\d.]+) GB \|", readme)
    assert row and (row.group(1), row.group(2)) == (f"{(total - vision - audio) / 1e9:.2f}", f"{bf16.disk_bytes / 1e9:.2f}")
