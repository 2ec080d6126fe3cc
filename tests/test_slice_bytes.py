"""Every output tensor equals an independent numpy slice of the source, and config.json is
rewritten exactly as the rules say, for the six specs of issue 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gslice
from gslice.testing import E4B_LIKE, compare_to_reference, read_checkpoint

from conftest import read_json

LM = "model.language_model."
E4B_TYPES = E4B_LIKE.layer_types()

# name, source fixture, layers_to_skip, ffn_dims (as given to gslice), widths per kept layer
MIXED = tuple([16, 24, 32, 40, 64] * 6 + [48, 56, 8, 64])  # 34 layers after skipping 3
CASES = [
    ("e2b_block_skip", "e4b", list(range(20, 25)), 32, [32] * 30),
    ("single_non_aligned_skip", "e4b", [21], None, [64] * 34),
    ("mixed_widths", "e4b", [3], MIXED, list(MIXED)),
    ("widths_only", "e4b", [], 48, [48] * 35),
    ("skips_in_kv_sharing_region", "e4b", [22, 27, 33], 40, [40] * 32),
    ("e2b_shaped_source", "e2b", [3, 25], 16, [16] * 28),
]


@pytest.mark.parametrize("name,fixture,skip,ffn,widths", CASES, ids=[c[0] for c in CASES])
def test_output_equals_numpy_reference(request, tmp_path, name, fixture, skip, ffn, widths):
    src = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    report = gslice.slice_model(src, out, layers_to_skip=skip, ffn_dims=ffn)
    assert compare_to_reference(src, out, layers_to_skip=skip, widths=widths) == []
    assert report.layers == len(widths)
    assert report.ffn_dims == widths


@pytest.mark.parametrize("name,fixture,skip,ffn,widths", CASES, ids=[c[0] for c in CASES])
def test_config_rewrite(request, tmp_path, name, fixture, skip, ffn, widths):
    src = request.getfixturevalue(fixture)
    gslice.slice_model(src, tmp_path / "out", layers_to_skip=skip, ffn_dims=ffn)
    before, after = read_json(src / "config.json"), read_json(tmp_path / "out" / "config.json")
    t0, t1 = before["text_config"], after["text_config"]
    kept = [i for i in range(t0["num_hidden_layers"]) if i not in skip]
    first_shared = t0["num_hidden_layers"] - t0["num_kv_shared_layers"]
    assert t1["num_hidden_layers"] == len(kept)
    assert t1["intermediate_size"] == widths
    assert t1["layer_types"] == [t0["layer_types"][i] for i in kept]
    assert t1["activation_sparsity_pattern"] == [t0["activation_sparsity_pattern"][i] for i in kept]
    assert t1["num_kv_shared_layers"] == sum(i >= first_shared for i in kept)
    changed = {"num_hidden_layers", "intermediate_size", "layer_types", "activation_sparsity_pattern", "num_kv_shared_layers"}
    assert {k: v for k, v in t0.items() if k not in changed} == {k: v for k, v in t1.items() if k not in changed}
    assert {k: v for k, v in before.items() if k != "text_config"} == {k: v for k, v in after.items() if k != "text_config"}


def test_non_aligned_skip_keeps_attention_types_of_the_kept_layers(tmp_path, e4b):
    # Skipping sliding layer 21 shifts every later layer down by one: the full-attention layers
    # 24, 29, 34 become 23, 28, 33. A 5-periodic default would wrongly put them at 24 and 29.
    gslice.slice_model(e4b, tmp_path / "out", layers_to_skip=[21])
    t = read_json(tmp_path / "out" / "config.json")["text_config"]
    assert [i for i, kind in enumerate(t["layer_types"]) if kind == "full_attention"] == [4, 9, 14, 19, 23, 28, 33]
    assert len(t["layer_types"]) == 34
    assert t["num_kv_shared_layers"] == 14


def test_e2b_spec_spot_checks(tmp_path, e4b):
    """A few tensors derived by hand, without the reference slicer."""
    out = tmp_path / "out"
    gslice.slice_model(e4b, out, layers_to_skip=range(20, 25), ffn_dims=32)
    s, o = read_checkpoint(e4b), read_checkpoint(out)
    # source layer 25 is output layer 20; its FFN keeps the leading 32 of 64 neurons
    assert np.array_equal(o[LM + "layers.20.mlp.gate_proj.weight"], s[LM + "layers.25.mlp.gate_proj.weight"][:32])
    assert np.array_equal(o[LM + "layers.20.mlp.down_proj.weight"], s[LM + "layers.25.mlp.down_proj.weight"][:, :32])
    assert np.array_equal(o[LM + "layers.20.self_attn.q_proj.weight"], s[LM + "layers.25.self_attn.q_proj.weight"])
    assert LM + "layers.30.input_layernorm.weight" not in o
    # PLE table: 8 columns per layer; kept layers 0-19 and 25-34
    ple = s[LM + "embed_tokens_per_layer.weight"]
    assert np.array_equal(o[LM + "embed_tokens_per_layer.weight"], np.hstack([ple[:, :160], ple[:, 200:]]))
    proj = s[LM + "per_layer_model_projection.weight"]
    assert np.array_equal(o[LM + "per_layer_model_projection.weight"], np.vstack([proj[:160], proj[200:]]))
    # towers and embeddings are unchanged
    for name in ("model.audio_tower.conformer.11.norm.weight", "model.embed_vision.embedding.weight", LM + "embed_tokens.weight"):
        assert np.array_equal(o[name], s[name])


def test_sharded_output_and_side_files(tmp_path, e4b):
    out = tmp_path / "out"
    report = gslice.slice_model(e4b, out, layers_to_skip=range(20, 25), max_shard_size=300_000)
    index = read_json(out / "model.safetensors.index.json")
    assert len(report.shards) == len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == report.tensor_bytes
    assert set(index["weight_map"]) == set(read_checkpoint(out))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja", "processor_config.json"):
        assert (out / name).read_bytes() == (e4b / name).read_bytes()
    card = (out / "README.md").read_text()
    assert "gslice" in card and '"layers_to_skip": [\n    20,' in card and "matformer" in card


def test_f32_single_file_source(tmp_path, make_checkpoint):
    src = make_checkpoint(E4B_LIKE.__class__(dtype="F32"), shards=1)
    gslice.slice_model(src, tmp_path / "out", layers_to_skip=[21, 22], ffn_dims=40)
    assert compare_to_reference(src, tmp_path / "out", layers_to_skip=[21, 22], widths=[40] * 33) == []


def test_slicing_a_sliced_checkpoint(tmp_path, e4b):
    first, second = tmp_path / "first", tmp_path / "second"
    gslice.slice_model(e4b, first, layers_to_skip=[22], ffn_dims=48)
    gslice.slice_model(first, second, layers_to_skip=[30], ffn_dims=32)  # source layer 31 of e4b
    direct = tmp_path / "direct"
    gslice.slice_model(e4b, direct, layers_to_skip=[22, 31], ffn_dims=32)
    a, b = read_checkpoint(second), read_checkpoint(direct)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((second / "config.json").read_text()) == json.loads((direct / "config.json").read_text())


def test_shared_kv_weights_absent_from_source_are_not_required(tmp_path, make_checkpoint):
    # transformers >= 4.56 saves no k/v projections for KV-sharing layers.
    src = make_checkpoint(E4B_LIKE.__class__(store_shared_kv=False))
    gslice.slice_model(src, tmp_path / "out", layers_to_skip=[25])
    assert compare_to_reference(src, tmp_path / "out", layers_to_skip=[25], widths=[64] * 34) == []
