"""Quantized outputs everywhere else outputs go: the size estimate matches the written files,
manifests record the quantization, `gslice verify --against` re-quantizes and compares, and
`gslice bulk --quant` writes what single slices write."""

from __future__ import annotations

import json
from pathlib import Path

from gslice import SliceSpec, accounting, gemma3n, prepare_slice, slice_model
from gslice.formats.safetensors import QuantOptions
from gslice.testing import read_checkpoint

E2B = dict(layers_to_skip=range(20, 25), ffn_dims=32)


def test_the_int4_estimate_is_the_written_size(e4b, tmp_path):
    report = slice_model(e4b, tmp_path / "q", quant="int4", group_size=32, **E2B)
    plan = prepare_slice(e4b, SliceSpec.build(**E2B))
    text = gemma3n.text_config(plan.new_config)
    estimate = accounting.footprint(plan.output_shapes(), text, plan.arch.prefix, "int4", 4096, 32)
    assert estimate.disk_bytes == report.tensor_bytes
    assert report.quantization["quantized_bytes_after"] < report.quantization["quantized_bytes_before"]


def test_manifest_records_the_quantization_and_verify_requantizes(e4b, tmp_path, cli):
    out = tmp_path / "q"
    slice_model(e4b, out, quant="int4", group_size=32, **E2B)
    manifest = json.loads((out / "gslice-manifest.json").read_text())
    assert manifest["quant"] == QuantOptions("int4", 32).to_json()
    result = cli("verify", out, "--against", e4b)
    assert result.code == 0, result.out
    # One flipped bit in a packed weight: caught by its hash and by re-quantizing the source.
    name = "model.language_model.layers.3.mlp.up_proj.weight_packed"
    shard = out / "model.safetensors"  # the tiny output fits one shard
    raw = bytearray(shard.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n + json.loads(raw[8 : 8 + n])[name]["data_offsets"][0]
    raw[start + 5] ^= 0x10
    shard.write_bytes(bytes(raw))
    lines = cli("verify", out, "--against", e4b).out.splitlines()
    assert f"{shard.name}: sha256 differs from the manifest" in " ".join(lines)
    assert f"{out}: tensor {name} bytes differ from the source's slice (first difference at byte 5 of the tensor)" in lines


def test_bulk_quantizes_like_single_slices(e4b, tmp_path, cli):
    out = tmp_path / "bulk"
    result = cli("bulk", e4b, "--presets", "google-e2b,google-main", "-o", out, "--quant", "int4", "--group-size", "32", "-q")
    assert result.code == 0, result.err
    for preset in ("google-e2b", "google-main"):
        single = tmp_path / preset
        slice_model(e4b, single, preset=preset, quant="int4", group_size=32)
        a, b = read_checkpoint(out / preset), read_checkpoint(single)
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a), preset
        assert json.loads((out / preset / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    # a resumed run with other quantization options redoes the outputs
    again = cli("bulk", e4b, "--presets", "google-e2b", "-o", out, "--quant", "int8", "--group-size", "32", "--resume", "--json")
    assert again.code == 0, again.err
    row = json.loads(again.out)["rows"][0]
    assert (row["status"], row["reason"]) == ("replaced", "it was written with other quantization options")
    assert Path(out / "google-e2b" / "config.json").exists()


def test_format_object_and_quant_keywords_write_the_same(e4b, tmp_path):
    import gslice

    a = slice_model(e4b, tmp_path / "a", quant="int4", group_size=32, **E2B)
    b = slice_model(e4b, tmp_path / "b", format=gslice.Safetensors(quant="int4", group_size=32), **E2B)
    assert [f["sha256"] for f in a.files if f["name"].endswith(".safetensors")] == [
        f["sha256"] for f in b.files if f["name"].endswith(".safetensors")
    ]
    manifest = json.loads((tmp_path / "b" / "gslice-manifest.json").read_text())
    assert manifest["output_format"] == {"name": "safetensors"}
    assert manifest["quant"] == QuantOptions("int4", 32).to_json()
    try:
        slice_model(e4b, tmp_path / "c", format=gslice.Safetensors(), quant="int4", **E2B)
    except gslice.SpecError as e:
        assert str(e) == "give the quantization inside format=Safetensors(quant=...), or quant=..., not both"
    else:
        raise AssertionError("format= and quant= together were accepted")
    assert not (tmp_path / "c").exists()
