"""The benchmark tooling in benches/ gives true figures only if its inputs and instruments are
right: the synthetic checkpoint has exactly the published E4B layout and valid values, the
tensor comparison catches differences, and the peak RSS is the child's own."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))

import compare  # noqa: E402
import measure  # noqa: E402
import synth  # noqa: E402

from gslice import GGUF, SpecError, engine, gemma3n  # noqa: E402
from gslice.slicing import prepare_slice, slice_model  # noqa: E402
from gslice.spec import SliceSpec  # noqa: E402
from gslice.testing import compare_to_reference, read_checkpoint  # noqa: E402

REFERENCE = json.loads((BENCHES.parent / "python/gslice/data/gemma-3n-E4B.tensors.json").read_text())["tensors"]
SMALL_BLOCK = 2**20 - 3  # a prime, so the small checkpoint is quick to generate


@pytest.fixture(scope="module")
def sparse_full(tmp_path_factory) -> Path:
    return Path(synth.write_checkpoint(tmp_path_factory.mktemp("synth") / "e4b", "full", sparse=True).path)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return Path(synth.write_checkpoint(tmp_path_factory.mktemp("synth") / "small", "small", block_elems=SMALL_BLOCK).path)


def test_full_layout_is_the_published_one(sparse_full):
    info = engine.inspect(sparse_full)
    assert {n: (t.dtype, list(t.shape)) for n, t in info.tensors.items()} == {
        n: (t["dtype"], t["shape"]) for n, t in REFERENCE.items()
    }
    assert len(info.tensors) == 1676
    assert info.total_bytes == 15_699_956_384
    assert [p.name for p in info.shards] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    # The 4.7 GB per-layer embedding table alone in shard 2, as the balanced split puts it.
    shard2 = [n for n, t in info.tensors.items() if t.shard == 1]
    assert shard2 == ["model.language_model.embed_tokens_per_layer.weight"]


def test_full_layout_config_is_e4b(sparse_full):
    arch = gemma3n.architecture(json.loads((sparse_full / "config.json").read_text()))
    assert (arch.num_layers, arch.num_kv_shared, arch.hidden_size, arch.ple_dim) == (35, 15, 2048, 256)
    assert arch.ffn_widths == (16384,) * 35
    assert arch.layer_types == tuple(["sliding_attention"] * 4 + ["full_attention"]) * 7
    assert (arch.audio_blocks, arch.audio_hidden, arch.has_vision) == (12, 1536, True)
    # docs/design.md's shape-arithmetic figures for the official E2B config on E4B.
    params = prepare_slice(sparse_full, SliceSpec.build(**synth.e2b_spec("full"))).params()
    assert (params.effective, params.text) == (1_905_495_648, 4_456_156_768)


def test_official_presets_parse_like_the_csv():
    presets = synth.official_presets("full")
    assert len(presets) == 16
    assert presets["Config for official E2B Model"] == {"layers_to_skip": [20, 21, 22, 23, 24], "ffn_dims": [8192] * 30}
    assert presets["Main model"] == {"layers_to_skip": [], "ffn_dims": [16384] * 35}
    assert synth.official_presets("mid")["Config for official E2B Model"]["ffn_dims"] == [2048] * 30


def test_mid_layout_scales_every_large_dimension(tmp_path):
    shapes = synth.scaled_shapes("mid")
    assert shapes.keys() == REFERENCE.keys()
    assert shapes["model.language_model.layers.0.mlp.down_proj.weight"] == (512, 4096)
    assert shapes["model.language_model.embed_tokens_per_layer.weight"] == (65536, 35 * 64)
    total = sum(2 * int(np.prod(s)) for s in shapes.values())
    assert 0.9e9 < total < 1.1e9


def test_the_llama_cpp_variant_keeps_the_per_layer_width_llama_cpp_fixes(tmp_path):
    """Below full size, the eval benchmark's checkpoint keeps the per-layer input width at 256
    (llama.cpp's n_embd_altup) and scales the rest: gslice's guard then lets it be a GGUF file."""
    shapes, scaled = synth.scaled_shapes("small", llama_cpp=True), synth.scaled_shapes("small")
    changed = {n for n in shapes if shapes[n] != scaled[n]}
    assert len(changed) == 3 + 2 * 35  # the table, its projection and norm; each layer's gate and projection
    assert shapes["model.language_model.embed_tokens_per_layer.weight"] == (16384, 35 * 256)
    assert shapes["model.language_model.layers.0.per_layer_input_gate.weight"] == (256, 128)
    assert shapes["model.language_model.layers.0.per_layer_projection.weight"] == (128, 256)
    assert shapes["model.language_model.layers.0.post_per_layer_input_norm.weight"] == (128,)
    assert synth.config("small", llama_cpp=True)["text_config"]["hidden_size_per_layer_input"] == 256
    src = synth.write_checkpoint(tmp_path / "small-llama", "small", block_elems=SMALL_BLOCK, llama_cpp=True, sync=False).path
    gguf = GGUF("q8_0")
    for spec in ({}, synth.e2b_spec("small")):  # the guard accepts the source and E2B
        assert prepare_slice(src, SliceSpec.build(**spec), format=gguf).output.file_type == "q8_0"
    scaled_src = synth.write_checkpoint(tmp_path / "small", "small", block_elems=SMALL_BLOCK, sync=False).path
    with pytest.raises(SpecError, match=r"^--format gguf: llama\.cpp "):
        prepare_slice(scaled_src, SliceSpec(), format=gguf)


def test_small_checkpoint_values_are_finite_bf16_and_slice_correctly(small, tmp_path):
    tensors = read_checkpoint(small)
    assert len(tensors) == 1676
    for name in ("model.language_model.embed_tokens_per_layer.weight", "model.language_model.norm.weight"):
        as_f32 = (tensors[name].astype(np.uint32) << 16).view(np.float32)
        assert np.isfinite(as_f32).all() and as_f32.std() > 0.01
    name = "model.language_model.layers.3.mlp.up_proj.weight"
    assert tensors[name].tobytes()[1000:1100] == synth.tensor_bytes_at(name, 1000, 100, block_elems=SMALL_BLOCK)
    spec = synth.e2b_spec("small")
    slice_model(small, tmp_path / "e2b", **spec)
    assert compare_to_reference(small, tmp_path / "e2b", layers_to_skip=spec["layers_to_skip"], widths=[spec["ffn_dims"]] * 30) == []


def test_compare_finds_a_flipped_byte_and_a_missing_tensor(small, tmp_path):
    copy = Path(shutil.copytree(small, tmp_path / "copy"))
    assert compare.compare(small, copy)["problems"] == []
    shard = copy / "model-00003-of-00004.safetensors"
    entry = compare.tensors(copy)["model.language_model.layers.7.mlp.gate_proj.weight"]
    with shard.open("r+b") as f:
        f.seek(entry.start + 12345)
        byte = f.read(1)
        f.seek(entry.start + 12345)
        f.write(bytes([byte[0] ^ 1]))
    problems = compare.compare(small, copy)["problems"]
    size = entry.end - entry.start  # under 64 MiB: compared as one window
    assert problems == [f"model.language_model.layers.7.mlp.gate_proj.weight: bytes differ in [0, {size})"]
    (copy / "model-00001-of-00004.safetensors").unlink()
    problems = compare.compare(small, copy)["problems"]
    assert len([p for p in problems if p.startswith(f"only in {small}:")]) == 284


def test_header_bytes_are_valid_safetensors():
    tensors = [synth.Tensor("a", (3, 5)), synth.Tensor("b", (7,))]
    raw = synth.header_bytes(tensors)
    (n,) = struct.unpack("<Q", raw[:8])
    assert n == len(raw) - 8 and n % 8 == 0
    header = json.loads(raw[8:])
    assert header["a"] == {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}
    assert header["b"] == {"dtype": "BF16", "shape": [7], "data_offsets": [30, 44]}


@pytest.mark.skipif(not Path(measure.TIME).exists(), reason=f"{measure.TIME} (GNU time) is not installed")
def test_peak_rss_is_the_childs_own():
    ballast = bytearray(400 << 20)  # this process grows well past the child's peak
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    r = measure.run("alloc", [sys.executable, "-c", "b = bytearray(96 << 20); b[::4096] = b'x' * len(b[::4096])"])
    assert r.exit_code == 0
    assert 96 << 20 < r.peak_rss < 200 << 20
    assert r.other_cores is not None and r.other_cores >= 0  # what else kept the machine busy meanwhile
    killed = measure.run("killed", ["sh", "-c", "kill -9 $$"])
    assert killed.exit_code == -9 and measure.signal_name(killed.exit_code) == "SIGKILL"
    del ballast
