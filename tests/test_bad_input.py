"""Bad input ends with exit code 2, one exact line on stderr, and no output left behind:
no output folder, and none of gslice's hidden temporary folders beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import hidden_leftovers

SHARD1 = "model-00001-of-00002.safetensors"


def assert_refused(result, message: str, out: Path) -> None:
    assert result.code == 2, (result.code, result.err)
    assert result.err == f"error: {message}\n"
    assert result.out == ""
    assert not out.exists()
    assert hidden_leftovers(out.parent) == []


SPEC_ERRORS = [
    (["--layers-to-skip", "35"], "layers_to_skip: 35 is out of range: the source has 35 layers (0-34)"),
    (["--layers-to-skip", "-1"], "layers_to_skip: -1 is out of range: the source has 35 layers (0-34)"),
    (["--layers-to-skip", "21,20-22"], "layers_to_skip: 21 is listed twice"),
    (["--layers-to-skip", "20.5"], "--layers-to-skip: '20.5' is not an integer (ASCII digits only)"),
    (
        ["--layers-to-skip", "19"],
        "layers_to_skip: layer 19 is the KV producer of the full_attention layers 24, 29, 34 "
        "(layers 20-34 reuse earlier keys/values, num_kv_shared_layers=15); it cannot be skipped while they are kept",
    ),
    (
        ["--layers-to-skip", "18,20-23"],
        "layers_to_skip: layer 18 is the KV producer of the sliding_attention layers 25, 26, 27, 28, 30, 31, 32, 33 "
        "(layers 20-34 reuse earlier keys/values, num_kv_shared_layers=15); it cannot be skipped while they are kept",
    ),
    (
        ["--layers-to-skip", "4,9,14,19"],
        "layers_to_skip: no full_attention layer before the KV-sharing region (layers 20-34) is kept, "
        "so the kept full_attention layers 24, 29, 34 would have no KV producer",
    ),
    (["--layers-to-skip", "20-24", "--ffn-dims", "32,32"], "ffn_dims: 2 widths given for 30 kept layers (35 source layers, 5 skipped)"),
    (["--ffn-dims", "0"], "ffn_dims = 0 must be a positive integer"),
    (["--ffn-dims", "-32"], "ffn_dims = -32 must be a positive integer"),
    (["--ffn-dims", "65"], "ffn_dims = 65 exceeds the source FFN width 64 of layer 0"),
    (["--ffn-dims", "32.0"], "--ffn-dims: '32.0' is not an integer (ASCII digits only)"),
    (["--ffn-dims", "2048*4"], "--ffn-dims: '2048*4' is not an integer (ASCII digits only)"),
]


@pytest.mark.parametrize("args,message", SPEC_ERRORS, ids=[m[:40] for _, m in SPEC_ERRORS])
def test_invalid_spec(cli, e4b, tmp_path, args, message):
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b, "-o", out, *args), message, out)


def test_skipping_everything(cli, e4b, tmp_path):
    # every producer gone and every layer gone: the emptiness is the first thing wrong
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--layers-to-skip", "0-34")
    assert_refused(result, "layers_to_skip: all 35 layers are skipped; keep at least one", out)


SPEC_FILE_ERRORS = [
    ({"ffn_dims": [32.0] * 35}, "ffn_dims[0] = 32.0 is not an integer: FFN widths are whole numbers of neurons (write 32)"),
    ({"ffn_dims": [32] * 34 + [5120.5]}, "ffn_dims[34] = 5120.5 is not an integer: FFN widths are whole numbers of neurons"),
    ({"ffn_dims": [32] * 10 + [0] + [32] * 24}, "ffn_dims[10] = 0 must be a positive integer"),
    ({"layers_to_skip": [20.0]}, "layers_to_skip[0] = 20.0 is not an integer layer index"),
    ({"layers_to_skip": "20-24"}, "layers_to_skip must be a list of integers, not '20-24'"),
    ({"ffn_dims": True}, "ffn_dims must be an integer or a list of integers, not True"),
]


@pytest.mark.parametrize("spec,message", SPEC_FILE_ERRORS, ids=[m[:40] for _, m in SPEC_FILE_ERRORS])
def test_invalid_spec_file(cli, e4b, tmp_path, spec, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b, "-o", out, "--spec", path), message, out)


def test_spec_file_problems(cli, e4b, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.json"
    bad.write_text("{'layers_to_skip': [1]}")
    assert_refused(
        cli("slice", e4b, "-o", out, "--spec", bad),
        f"spec {bad} is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        out,
    )
    bad.write_text('{"layer_to_skip": [1]}')
    assert_refused(
        cli("slice", e4b, "-o", out, "--spec", bad),
        f"spec {bad}: unknown key 'layer_to_skip' (known keys: layers_to_skip, ffn_dims, audio_layers_to_skip, drop_vision, drop_audio, text_only)",
        out,
    )
    assert_refused(
        cli("slice", e4b, "-o", out, "--spec", bad, "--layers-to-skip", "3"),
        "give either --spec or --layers-to-skip/--ffn-dims, not both",
        out,
    )


def test_source_is_not_gemma3n(cli, e4b_copy, tmp_path):
    config = json.loads((e4b_copy / "config.json").read_text())
    config["model_type"] = "llama"
    (e4b_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"{e4b_copy}/config.json: model_type is 'llama', not a Gemma 3n checkpoint (expected 'gemma3n' or 'gemma3n_text')",
        out,
    )
    (e4b_copy / "config.json").unlink()
    assert_refused(cli("slice", e4b_copy, "-o", out), f"{e4b_copy} is not a Gemma 3n checkpoint: it has no config.json", out)


def test_source_missing(cli, tmp_path):
    out = tmp_path / "out"
    assert_refused(cli("slice", tmp_path / "nowhere", "-o", out), f"source {tmp_path / 'nowhere'} does not exist", out)


def test_notebook_config_with_stale_layer_types(cli, e4b_copy, tmp_path):
    config = json.loads((e4b_copy / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 30  # layer_types still lists 35
    config["text_config"]["intermediate_size"] = 64
    config["text_config"]["activation_sparsity_pattern"] = None
    (e4b_copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"{e4b_copy}/config.json: layer_types has 35 entries but num_hidden_layers is 30 (a config written by the "
        "published slicing notebook; layer_types must list the kept layers)",
        out,
    )


def rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def drop_tensor(ckpt: Path, name: str) -> None:
    """Removes a tensor from the header and index, keeping the file valid otherwise."""
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = ckpt / index["weight_map"].pop(name)
    index_path.write_text(json.dumps(index))
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    meta = header.pop("__metadata__", None)
    kept = sorted(((k, v) for k, v in header.items() if k != name), key=lambda kv: kv[1]["data_offsets"][0])
    new_header, chunks, pos = ({"__metadata__": meta} if meta else {}), [], 0
    for k, v in kept:
        b, e = v["data_offsets"]
        chunks.append(data[b:e])
        new_header[k] = {**v, "data_offsets": [pos, pos + e - b]}
        pos += e - b
    text = json.dumps(new_header).encode()
    shard.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def test_missing_tensor(cli, e4b_copy, tmp_path):
    name = "model.language_model.layers.7.mlp.up_proj.weight"
    drop_tensor(e4b_copy, name)
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b_copy, "-o", out), f"missing tensor {name}: config.json implies it and the output holds it", out)
    # a skipped layer's tensors are not needed
    assert cli("slice", e4b_copy, "-o", out, "--layers-to-skip", "7").code == 0


def test_wrong_dtype_and_shape(cli, e4b_copy, tmp_path):
    index = json.loads((e4b_copy / "model.safetensors.index.json").read_text())
    name = "model.language_model.layers.3.mlp.gate_proj.weight"
    shard = e4b_copy / index["weight_map"][name]

    def to_i16(h):
        h[name]["dtype"] = "I16"

    rewrite_header(shard, to_i16)
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"tensor {name} has dtype I16; Gemma 3n weights are floating point (BF16, F16, F32)",
        out,
    )

    def transpose(h):
        h[name]["dtype"] = "BF16"
        h[name]["shape"] = list(reversed(h[name]["shape"]))

    rewrite_header(shard, transpose)
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"tensor {name} has shape [32, 64], but config.json implies [64, 32]",
        out,
    )


def test_header_length_larger_than_file(cli, e4b_copy, tmp_path):
    shard = e4b_copy / SHARD1
    raw = bytearray(shard.read_bytes())
    raw[:8] = (len(raw) + 100).to_bytes(8, "little")
    shard.write_bytes(raw)
    out = tmp_path / "out"
    assert_refused(cli("slice", e4b_copy, "-o", out), f"{shard}: header length {len(raw) + 100} exceeds the file size {len(raw)}", out)


def test_truncated_shard(cli, e4b_copy, tmp_path):
    shard = e4b_copy / SHARD1
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-10])
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")
    last, info = max(header.items(), key=lambda kv: kv[1]["data_offsets"][1])
    end = info["data_offsets"][1]
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"{shard}: tensor {last}: data_offsets end {end} lies past the end of the data section ({end - 10} bytes): "
        "the file is truncated or the offsets are wrong",
        out,
    )


def test_overlapping_tensors(cli, e4b_copy, tmp_path):
    shard = e4b_copy / SHARD1
    seen = {}

    def overlap(h):
        items = sorted(((k, v) for k, v in h.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
        (a, va), (b, vb) = items[0], items[1]
        # move b onto a's bytes (same size keeps the span rule satisfied), a gap appears later
        size_b = vb["data_offsets"][1] - vb["data_offsets"][0]
        vb["data_offsets"] = [1, 1 + size_b]
        seen.update(a=a, b=b, a_end=va["data_offsets"][1], b_end=1 + size_b)

    rewrite_header(shard, overlap)
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"{shard}: tensors {seen['a']} [0, {seen['a_end']}) and {seen['b']} [1, {seen['b_end']}) overlap",
        out,
    )


def test_invalid_header_json_and_unknown_dtype(cli, e4b_copy, tmp_path):
    shard = e4b_copy / SHARD1
    raw = bytearray(shard.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 + n - 1 : 8 + n] = b"?"  # last byte of the JSON
    shard.write_bytes(raw)
    out = tmp_path / "out"
    result = cli("slice", e4b_copy, "-o", out)
    assert result.code == 2 and result.err.startswith(f"error: {shard}: header is not valid JSON: ")
    assert not out.exists()


def test_index_pointing_at_missing_tensor(cli, e4b_copy, tmp_path):
    index_path = e4b_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.language_model.ghost.weight"] = SHARD1
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_refused(
        cli("slice", e4b_copy, "-o", out),
        f"{index_path}: maps tensor model.language_model.ghost.weight to {SHARD1}, which does not contain it",
        out,
    )


def test_output_exists(cli, e4b, tmp_path):
    out = tmp_path / "out"
    assert cli("slice", e4b, "-o", out, "-q").code == 0
    result = cli("slice", e4b, "-o", out)
    assert result.code == 2
    assert result.err == f"error: output path {out} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)\n"
    assert cli("slice", e4b, "-o", out, "--overwrite", "-q", "--layers-to-skip", "20-24").code == 0
    assert json.loads((out / "config.json").read_text())["text_config"]["num_hidden_layers"] == 30
    assert hidden_leftovers(tmp_path) == []


def test_output_replacing_the_source(cli, e4b_copy):
    result = cli("slice", e4b_copy, "-o", e4b_copy, "--overwrite")
    assert result.code == 2
    assert result.err == f"error: output path {e4b_copy} holds the source checkpoint {e4b_copy}; refusing to replace it\n"
    assert (e4b_copy / "config.json").exists()


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a small tmpfs needs Linux and root")
def test_full_disk(cli, e4b, tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "out"
        result = cli("slice", e4b, "-o", out)
        assert result.code == 2
        assert result.err.startswith(f"error: not enough free space in {disk} for the output (")
        assert result.err.endswith(" bytes of shards); nothing was written\n")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
