"""Rule 4 of issue 11: the source is checked against its config.json tensor by tensor before
anything is written. Every tensor the output holds has the shape and the dtype the config
implies (one dtype for the whole checkpoint), unknown tensors are named, and a config whose
FFN width, audio block count or layer count disagrees with the tensors is refused, by slice,
plan, info and verify --against alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import hidden_leftovers, read_json, tree_digest
from gslice import engine
from gslice.testing import TinyGemma3n, write_tiny_checkpoint
from test_bad_input import drop_tensor, rewrite_header

LM = "model.language_model."


def shard_of(ckpt: Path, name: str) -> Path:
    return ckpt / read_json(ckpt / "model.safetensors.index.json")["weight_map"][name]


def edit_tensor(ckpt: Path, name: str, **changes) -> None:
    def edit(h):
        h[name].update(changes)

    rewrite_header(shard_of(ckpt, name), edit)


def edit_config(ckpt: Path, edit) -> None:
    config = read_json(ckpt / "config.json")
    edit(config)
    (ckpt / "config.json").write_text(json.dumps(config))


def add_tensor(ckpt: Path, name: str, shape: list[int], dtype: str = "BF16") -> None:
    """Appends a tensor of zeros to the first shard (and the index)."""
    shard = ckpt / "model-00001-of-00002.safetensors"
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    size = {"BF16": 2, "I64": 8}[dtype] * math.prod(shape)
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
    text = json.dumps(header).encode()
    shard.write_bytes(len(text).to_bytes(8, "little") + text + data + b"\0" * size)
    index = read_json(ckpt / "model.safetensors.index.json")
    index["weight_map"][name] = shard.name
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


def assert_refused_everywhere(cli, ckpt: Path, tmp_path: Path, message: str) -> None:
    """slice (and its dry run), plan and info all refuse with the same line; nothing written."""
    before = tree_digest(ckpt)
    out = tmp_path / "out"
    for args in (["slice", ckpt, "-o", out], ["slice", ckpt, "-o", out, "--dry-run"], ["plan", ckpt], ["info", ckpt]):
        result = cli(*args)
        assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n"), args
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    assert tree_digest(ckpt) == before


MISSING = [
    LM + "embed_tokens.weight",
    LM + "norm.weight",
    "model.audio_tower.conformer.3.lconv1d.linear_start.weight",
    "model.embed_vision.embedding_projection.weight",
]


@pytest.mark.parametrize("name", MISSING, ids=["embed_tokens", "final norm", "audio tower", "vision embedder"])
def test_a_missing_tensor_is_named(cli, e4b_copy, tmp_path, name):
    drop_tensor(e4b_copy, name)
    assert_refused_everywhere(cli, e4b_copy, tmp_path, f"missing tensor {name}: config.json implies it and the output holds it")


def test_a_transposed_or_reshaped_tensor_is_refused(cli, make_checkpoint, tmp_path):
    ckpt = make_checkpoint(TinyGemma3n(heads=4), "wide")  # q_proj [64, 32]: a transposition shows
    q = LM + "layers.3.self_attn.q_proj.weight"
    edit_tensor(ckpt, q, shape=[32, 64])
    assert_refused_everywhere(cli, ckpt, tmp_path, f"tensor {q} has shape [32, 64], but config.json implies [64, 32]")
    edit_tensor(ckpt, q, shape=[64, 32])
    proj = LM + "layers.7.per_layer_projection.weight"  # [32, 8] read as [16, 16]: the same bytes
    edit_tensor(ckpt, proj, shape=[16, 16])
    assert_refused_everywhere(cli, ckpt, tmp_path, f"tensor {proj} has shape [16, 16], but config.json implies [32, 8]")


def test_one_dtype_for_the_whole_checkpoint(cli, e4b_copy, tmp_path):
    name = LM + "layers.12.laurel.linear_left.weight"
    edit_tensor(e4b_copy, name, dtype="F16")  # same size: the file stays valid
    n = len(read_json(e4b_copy / "model.safetensors.index.json")["weight_map"])
    assert_refused_everywhere(
        cli, e4b_copy, tmp_path,
        f"tensor {name} is F16 but the other {n - 1} tensors are BF16: a checkpoint holds one dtype, and its config one torch_dtype",
    )


def test_unknown_tensors_are_named(cli, e4b_copy, tmp_path):
    add_tensor(e4b_copy, LM + "lm_head.weight", [300, 32])
    add_tensor(e4b_copy, "model.extra_projection.weight", [4, 4])
    assert_refused_everywhere(
        cli, e4b_copy, tmp_path,
        f"the source holds tensors model.extra_projection.weight, {LM}lm_head.weight that config.json does not describe",
    )


CONFIG_DISAGREES = [
    (lambda c: c["text_config"].update(intermediate_size=[48] * 35),
     f"tensor {LM}layers.0.mlp.down_proj.weight has shape [32, 64], but config.json implies [32, 48] (104 more tensors differ from it too)"),
    (lambda c: c["audio_config"].update(conf_num_hidden_layers=10),
     "the checkpoint holds audio Conformer blocks 0-11 but config.json says conf_num_hidden_layers=10"),
    (lambda c: c["text_config"].update(num_hidden_layers=34, layer_types=c["text_config"]["layer_types"][:34],
                                      intermediate_size=64, activation_sparsity_pattern=None, num_kv_shared_layers=14),
     "the checkpoint holds decoder layers 0-34 but config.json says num_hidden_layers=34"),
]


@pytest.mark.parametrize("edit,message", CONFIG_DISAGREES, ids=["ffn width", "audio blocks", "layer count"])
def test_a_config_that_disagrees_with_the_tensors_is_refused(cli, e4b_copy, tmp_path, edit, message):
    edit_config(e4b_copy, edit)
    assert_refused_everywhere(cli, e4b_copy, tmp_path, message)


def test_verify_against_such_a_source_fails(cli, e4b, tmp_path):
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "--layers-to-skip", "20-24", "-q").code == 0
    damaged = tmp_path / "damaged"
    write_tiny_checkpoint(damaged, TinyGemma3n(), shards=2)
    name = LM + "layers.12.laurel.linear_left.weight"
    edit_tensor(damaged, name, dtype="F16")
    result = cli("verify", out, "--against", damaged)
    n = len(read_json(damaged / "model.safetensors.index.json")["weight_map"])
    assert (result.code, result.out) == (2, "")
    assert result.err == (f"error: tensor {name} is F16 but the other {n - 1} tensors are BF16: a checkpoint holds one dtype, "
                          "and its config one torch_dtype\n")


def test_a_skipped_layer_and_a_dropped_tower_need_no_tensors(cli, e4b_copy, tmp_path):
    drop_tensor(e4b_copy, LM + "layers.7.mlp.up_proj.weight")
    drop_tensor(e4b_copy, "model.audio_tower.conformer.3.lconv1d.linear_start.weight")
    drop_tensor(e4b_copy, LM + "layers.25.self_attn.k_proj.weight")  # a KV-sharing layer: never read
    out = tmp_path / "out"
    assert cli("slice", e4b_copy, "-o", out, "--layers-to-skip", "7", "--drop-audio", "-q").code == 0
    assert cli("verify", out, "--against", e4b_copy, "-q").code == 0


def test_an_undescribed_vision_tower_is_kept_as_it_is(cli, e4b_copy, tmp_path):
    """No config field describes the tiny test tower (only the published MobileNet-V5 is
    known): its tensors, integer BatchNorm counters included, are copied as they are."""
    counter = "model.vision_tower.timm_model.blocks.0.0.bn1.num_batches_tracked"
    add_tensor(e4b_copy, counter, [], "I64")
    out = tmp_path / "out"
    assert cli("slice", e4b_copy, "-o", out, "-q").code == 0
    assert cli("verify", out, "--against", e4b_copy, "-q").code == 0
    t = engine.inspect(out).tensors[counter]
    assert (t.dtype, t.shape) == ("I64", ())
