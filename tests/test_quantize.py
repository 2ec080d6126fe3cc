"""Quantized slices. Every packed tensor, scale and shape equals gslice.testing's numpy
implementation of compressed-tensors' algorithm bit for bit; every other tensor equals the
BF16 slice; the report's error figures equal numpy's; config.json carries the matching
quantization_config. The expected targets are written out here, apart from gemma3n.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import gslice
from gslice import engine
from gslice.engine import OutputPlan, Quantization, TensorPlan
from gslice.quantization import QuantOptions
from gslice.testing import (
    E4B_LIKE,
    TinyGemma3n,
    f32_to_bf16_bits,
    read_checkpoint,
    reference_quantize,
    reference_slice,
    write_safetensors,
)

from conftest import hidden_leftovers, read_json

LM = "model.language_model."
TEXT_TARGETS = re.compile(
    r"^model\.language_model\.("
    r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|laurel\.linear_(left|right)"
    r"|per_layer_input_gate|per_layer_projection)"
    r"|per_layer_model_projection|altup_projections\.\d+|altup_unembed_projections\.\d+)\.weight$"
)
EMBEDDING_TABLES = {
    LM + "embed_tokens.weight",
    LM + "embed_tokens_per_layer.weight",
    "model.embed_audio.embedding.weight",
    "model.embed_vision.embedding.weight",
}
PARTS = ("weight_packed", "weight_scale", "weight_shape")


def wanted_targets(tensors: dict[str, np.ndarray], group: int, embeddings: bool, audio: bool) -> set[str]:
    out = set()
    for name, a in tensors.items():
        if a.ndim != 2 or a.shape[1] % group:
            continue
        if (
            TEXT_TARGETS.match(name)
            or (embeddings and name == LM + "embed_tokens_per_layer.weight")
            or (audio and name.startswith("model.audio_tower.") and name.endswith(".weight"))
        ):
            out.add(name)
    return out


def check_output(src: Path, out: Path, bits: int, group: int, embeddings=False, audio=False, **spec):
    """Asserts the quantized output bit for bit; returns the BF16 slice, targets and references."""
    bf16 = reference_slice(read_checkpoint(src), read_json(src / "config.json"), **spec)
    got = read_checkpoint(out)
    targets = wanted_targets(bf16, group, embeddings, audio)
    assert targets
    names = (bf16.keys() - targets) | {t.removesuffix("weight") + p for t in targets for p in PARTS}
    assert set(got) == names
    for name in bf16.keys() - targets:
        assert got[name].dtype == bf16[name].dtype and got[name].tobytes() == bf16[name].tobytes(), name
    refs = {}
    for t in sorted(targets):
        ref = reference_quantize(bf16[t], bits, group)
        m = t.removesuffix("weight")
        packed, scale, shape = (got[m + p] for p in PARTS)
        assert packed.dtype == np.int32 and np.array_equal(packed, ref.packed), t
        assert scale.dtype == np.uint16 and np.array_equal(scale, ref.scales), t  # BF16 bits
        assert shape.dtype == np.int64 and shape.tolist() == list(bf16[t].shape), t
        refs[t] = ref
    return bf16, targets, refs


def check_report(report, bf16, refs):
    q = report.quantization
    assert sorted(t["name"] for t in q["tensors"]) == sorted(refs)
    for t in q["tensors"]:
        ref, a = refs[t["name"]], bf16[t["name"]]
        assert t["shape"] == list(a.shape)
        assert t["bytes_before"] == a.nbytes
        assert t["bytes_after"] == ref.packed.nbytes + ref.scales.nbytes + 16
        assert t["max_abs_error"] == ref.max_abs_error  # exact: a maximum of exact differences
        assert t["weight_rms"] == pytest.approx(ref.weight_rms, rel=1e-12)
        assert t["rms_error"] == pytest.approx(ref.rms_error, rel=1e-12)
        assert t["rel_rms_error"] == pytest.approx(ref.rms_error / ref.weight_rms, rel=1e-12)
        assert t["rel_max_abs_error"] == pytest.approx(ref.max_abs_error / ref.weight_rms, rel=1e-12)
    assert q["quantized_bytes_before"] == sum(bf16[n].nbytes for n in refs)
    assert q["quantized_bytes_after"] == sum(r.packed.nbytes + r.scales.nbytes + 16 for r in refs.values())
    assert q["output_bytes"] == report.tensor_bytes
    assert q["output_bytes_unquantized"] == sum(a.nbytes for a in bf16.values())


def check_config(src: Path, out: Path, bf16, targets, bits, group, extra_targets=(), **slice_kw):
    """config.json = the BF16 slice's config + a quantization_config whose ignore list names
    every Linear module that is not quantized."""
    plain = out.parent / "plain"
    gslice.slice_model(src, plain, **slice_kw)
    config, expected = read_json(out / "config.json"), read_json(plain / "config.json")
    q = config.pop("quantization_config")
    assert config == expected
    linears = {n for n, a in bf16.items() if a.ndim == 2 and n.endswith(".weight") and n not in EMBEDDING_TABLES}
    ignore = ["lm_head"] + sorted(n.removesuffix(".weight") for n in linears - targets)
    assert sorted(q.pop("ignore")) == sorted(ignore)
    weights = {"num_bits": bits, "type": "int", "symmetric": True, "group_size": group, "strategy": "group", "dynamic": False}
    assert q == {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear", *extra_targets],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def test_int4_with_embeddings_and_audio(tmp_path, make_checkpoint):
    # audio hidden 32 so that most audio Linear weights have whole groups of 32; 32 kept
    # layers x 8 = 256 PLE columns, so the PLE table (column blocks) is quantized too.
    src = make_checkpoint(TinyGemma3n(audio_hidden=32))
    out = tmp_path / "out"
    spec = dict(layers_to_skip=[20, 21, 22], ffn_dims=32)
    report = gslice.slice_model(src, out, quant="int4", group_size=32, quant_embeddings=True, quant_audio=True, **spec)
    bf16, targets, refs = check_output(src, out, 4, 32, embeddings=True, audio=True, layers_to_skip=[20, 21, 22], widths=[32] * 32)
    # every kind of fused operation is among the targets
    assert {LM + "layers.20.mlp.gate_proj.weight", LM + "layers.20.mlp.down_proj.weight", LM + "per_layer_model_projection.weight",
            LM + "embed_tokens_per_layer.weight", "model.audio_tower.conformer.11.ffw_layer_end.ffw_layer_2.weight"} <= targets
    check_report(report, bf16, refs)
    check_config(src, out, bf16, targets, 4, 32, extra_targets=[LM + "embed_tokens_per_layer"], **spec)
    q = report.quantization
    assert (q["scheme"], q["bits"], q["group_size"], q["embeddings"], q["audio"]) == ("int4", 4, 32, True, True)
    # laurel.linear_right is [32, 4] and per_layer_projection [32, 8]: narrower than a group
    kept = {k["name"]: k["reason"] for k in q["kept"]}
    assert kept[LM + "layers.0.laurel.linear_right.weight"] == "width 4 is not a multiple of the group size 32"
    assert kept[LM + "layers.31.per_layer_projection.weight"] == "width 8 is not a multiple of the group size 32"
    assert 0.05 < q["rel_rms_error_mean"] < 0.15


def test_int8_single_file_source(tmp_path, e2b):
    out = tmp_path / "out"
    report = gslice.slice_model(e2b, out, layers_to_skip=[3, 25], ffn_dims=32, quant="int8", group_size=32)
    bf16, targets, refs = check_output(e2b, out, 8, 32, layers_to_skip=[3, 25], widths=[32] * 28)
    check_report(report, bf16, refs)
    check_config(e2b, out, bf16, targets, 8, 32, layers_to_skip=[3, 25], ffn_dims=32)
    assert report.quantization["rel_rms_error_mean"] < 0.01
    # the plan knows the output size before writing
    plan = gslice.prepare_slice(e2b, gslice.SliceSpec(layers_to_skip=(3, 25), ffn_dims=32), quant=QuantOptions("int8", 32))
    assert plan.output_bytes() == report.tensor_bytes < plan.unquantized_bytes()


def test_group_128_keeps_the_narrow_laurel_projection(tmp_path, make_checkpoint):
    # E4B's proportions at 1/16 width: hidden 128, FFN 256, PLE 128, LAuReL rank 64 < 128.
    model = TinyGemma3n(hidden=128, ffn=256, ple_dim=128, head_dim=64, laurel_rank=64, vision=False, audio=False)
    src = make_checkpoint(model, shards=1)
    out = tmp_path / "out"
    report = gslice.slice_model(src, out, ffn_dims=128, quant="int4")
    bf16, targets, refs = check_output(src, out, 4, 128, widths=[128] * 35)
    check_report(report, bf16, refs)
    check_config(src, out, bf16, targets, 4, 128, ffn_dims=128)
    assert {k["name"] for k in report.quantization["kept"]} == {f"{LM}layers.{i}.laurel.linear_right.weight" for i in range(35)}


def test_f32_source(tmp_path, make_checkpoint):
    src = make_checkpoint(TinyGemma3n(dtype="F32", vision=False, audio=False))
    out = tmp_path / "out"
    report = gslice.slice_model(src, out, layers_to_skip=[21, 22], quant="int4", group_size=32)
    bf16, _, refs = check_output(src, out, 4, 32, layers_to_skip=[21, 22], widths=[64] * 33)
    check_report(report, bf16, refs)
    assert report.quantization["tensors"][0]["bytes_before"] == math.prod(report.quantization["tensors"][0]["shape"]) * 4


def test_edge_cases_through_the_engine(tmp_path):
    """All-zero groups, one huge value in a group, values so small that the scale underflows,
    exact ties, F16 and F32 sources, and groups that straddle gathered column blocks."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((6, 96)) * 0.02).astype(np.float32)
    w[1] = 0.0  # all-zero row: three all-zero groups
    w[2, 40] = 300.0  # one huge value in group 1 of row 2
    w[3, :32] = 2.0**-133  # the smallest BF16 subnormal: absmax / 7.5 rounds to a zero BF16 scale
    w[4, :32] = np.arange(32) * 0.5 - 8.0  # absmax 8 -> scale bf16(8 / 7.5); many near-ties
    w[5, 64:] = -7.5  # a group of equal negative values: q = -8 ... clamp edge
    arrays = {
        "bf16": ("BF16", f32_to_bf16_bits(w)),
        "f16": ("F16", w.astype(np.float16)),
        "f32": ("F32", w),
    }
    src = write_safetensors(tmp_path / "src.safetensors", arrays)
    as_f32 = {"bf16": (f32_to_bf16_bits(w).astype(np.uint32) << 16).view(np.float32), "f16": w.astype(np.float16).astype(np.float32), "f32": w}
    cases = []  # (name, source, op, bits, group, expected f32 input)
    for dt in arrays:
        cases.append((f"{dt}_copy", dt, engine.copy(), 4, 32, as_f32[dt]))
        cases.append((f"{dt}_int8", dt, engine.copy(), 8, 32, as_f32[dt]))
    blocks = engine.keep_col_blocks(8, [1, 3, 4, 11, 0, 6, 7, 9])  # 64 columns, groups straddle blocks
    picked = np.hstack([as_f32["bf16"][:, i * 8 : (i + 1) * 8] for i in [1, 3, 4, 11, 0, 6, 7, 9]])
    cases.append(("blocks", "bf16", blocks, 4, 32, picked))
    cases.append(("rows", "bf16", engine.keep_row_blocks(2, [2, 0]), 4, 32, as_f32["bf16"][[4, 5, 0, 1]]))

    def plan(name, source, op, bits, group):
        q = Quantization(bits, group, f"{name}.weight_scale", f"{name}.weight_shape", f"{name}.weight")
        return TensorPlan(f"{name}.weight_packed", source, op, q)

    out = tmp_path / "out"
    report = engine.execute(src, [OutputPlan(out, [plan(*c[:5]) for c in cases])], band_bytes=2 * 96 * 2)
    got = read_checkpoint(out)
    for (name, _, _, bits, group, x), rep in zip(cases, report.quantized):
        ref = reference_quantize(x, bits, group)
        assert np.array_equal(got[f"{name}.weight_packed"], ref.packed), name
        assert np.array_equal(got[f"{name}.weight_scale"], ref.scales), name
        assert got[f"{name}.weight_shape"].tolist() == list(x.shape)
        assert rep.name == f"{name}.weight_packed" and rep.max_abs_error == ref.max_abs_error
        assert rep.rms_error == pytest.approx(ref.rms_error, rel=1e-12)
    ref = reference_quantize(as_f32["bf16"], 4, 32)
    assert (ref.scales[1] == 0x3C00).all() and (ref.q[1] == 0).all()  # zero groups: epsilon scale, q = 0
    assert ref.scales[3, 0] == 0x3C00 and (ref.q[3, :32] == 0).all()
    assert ref.q[2, 40] == 7 and (ref.q[2, 32:64][np.arange(32) != 8] == 0).all()  # the huge value flattens its group only
    assert (ref.q[5, 64:] == -8).all()
    assert np.isfinite(ref.dequantized).all()


def test_non_finite_weight_is_refused(cli, e4b_copy, tmp_path):
    name = LM + "layers.3.mlp.up_proj.weight"
    raw = json.loads(gslice._core.inspect(str(e4b_copy)))
    t = next(t for t in raw["tensors"] if t["name"] == name)
    shard = Path(raw["shards"][t["shard"]]["path"])
    data = bytearray(shard.read_bytes())
    at = t["offset"] + (5 * 32 + 7) * 2  # row 5, column 7 of [64, 32] BF16
    data[at : at + 2] = (0x7F80).to_bytes(2, "little")  # +inf
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = cli("slice", e4b_copy, "-o", out, "--quant", "int4", "--group-size", "32")
    assert result.code == 2
    assert result.err == (
        f"error: {shard}: tensor {name}: row 5 of {LM}layers.3.mlp.up_proj.weight_packed holds NaN or infinity, "
        "which cannot be quantized\n"
    )
    assert not out.exists() and hidden_leftovers(tmp_path) == []


QUANT_ERRORS = [
    (["--group-size", "64"], "--group-size needs --quant int4 or --quant int8"),
    (["--quant-embeddings"], "--quant-embeddings needs --quant int4 or --quant int8"),
    (["--quant", "int3"], "quant: 'int3' is not a supported scheme (choose int4 or int8)"),
    (["--quant", "int4", "--group-size", "100"], "group_size: 100 is not supported (choose 32, 64, 128)"),
    (["--quant", "int4", "--group-size", "3x"], "--group-size: '3x' is not an integer (ASCII digits only)"),
    (
        ["--quant", "int4"],
        "group_size 128: the FFN width 64 of output layer 0 is not a multiple of it (mlp.down_proj is quantized "
        "in groups of 128 along that width); use FFN widths that are multiples of 128 or a smaller group size",
    ),
    (
        ["--quant", "int8", "--group-size", "32", "--layers-to-skip", "2", "--ffn-dims", "48"],
        "group_size 32: the FFN width 48 of output layer 0 is not a multiple of it (mlp.down_proj is quantized "
        "in groups of 32 along that width); use FFN widths that are multiples of 32 or a smaller group size",
    ),
]


@pytest.mark.parametrize("args,message", QUANT_ERRORS, ids=[m[:40] for _, m in QUANT_ERRORS])
def test_invalid_quant_options(cli, e4b, tmp_path, args, message):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, *args)
    assert (result.code, result.err, result.out) == (2, f"error: {message}\n", "")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


def test_api_refuses_options_without_a_scheme(tmp_path, e4b):
    with pytest.raises(gslice.SpecError, match=r"^group_size needs quant='int4' or 'int8' \(--quant\)$"):
        gslice.slice_model(e4b, tmp_path / "out", group_size=64)
    with pytest.raises(gslice.ArgumentError, match=r"^quant_audio must be True or False, not int 1$"):
        gslice.slice_model(e4b, tmp_path / "out", quant="int4", group_size=32, quant_audio=1)


def test_quantized_source_is_refused(cli, e4b_copy, tmp_path):
    config = read_json(e4b_copy / "config.json")
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (e4b_copy / "config.json").write_text(json.dumps(config))
    result = cli("slice", e4b_copy, "-o", tmp_path / "out")
    assert result.code == 2
    assert result.err == (
        f"error: {e4b_copy / 'config.json'} has a quantization_config: the source is already quantized; "
        "gslice reads unquantized (BF16, F16, F32) checkpoints\n"
    )


def test_cli_report(cli, e4b, tmp_path):
    result = cli("slice", e4b, "-o", tmp_path / "out", "--layers-to-skip", "20-24", "--ffn-dims", "32",
                 "--quant", "int4", "--group-size", "32", "--json")
    assert result.code == 0, result.err
    r = json.loads(result.out)
    q = r["quantization"]
    assert (q["scheme"], q["group_size"], q["format"]) == ("int4", 32, "pack-quantized")
    # per layer: q, k, v, o, gate, up, down, linear_left, per_layer_input_gate; plus the PLE
    # projection and 3 + 3 AltUp projections
    assert len(q["tensors"]) == 30 * 9 + 1 + 6
    assert r["params"] == json.loads(cli("slice", e4b, "-o", tmp_path / "plain", "--layers-to-skip", "20-24",
                                         "--ffn-dims", "32", "--json").out)["params"]
    table = cli("slice", e4b, "-o", tmp_path / "out2", "--layers-to-skip", "20-24", "--ffn-dims", "32",
                "--quant", "int4", "--group-size", "32")
    rows = dict(line.split(None, 1) for line in table.out.splitlines() if not line.startswith(("kept", "quant error")))
    assert rows["quantization"] == "int4, groups of 32, BF16 scales (pack-quantized, compressed-tensors)"
    assert rows["quantized"].startswith("277 weights: ")
    card = (tmp_path / "out2" / "README.md").read_text()
    assert "- compressed-tensors\n- int4\n" in card and "277 weights quantized" in card
