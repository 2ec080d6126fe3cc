"""MLX outputs (--format mlx) without mlx: the folder layout mlx_lm.convert writes, config.json,
every tensor against an independent numpy derivation (reference_slice, then the numpy reference
of ``mx.quantize``), the refusals (exact messages, exit 2, nothing written), the KV-sharing
layers' k/v of a source that has none, verify, --overwrite and bulk. The interop tier
(tests/interop/test_mlx_output.py) runs mlx-lm and mlx_lm.convert on the same kind of folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import gslice
from gslice.evaluation.runners import runtime_of
from gslice.testing import (
    E4B_LIKE,
    read_checkpoint,
    reference_affine_quantize,
    reference_slice,
    with_changes,
    write_tiny_checkpoint,
)

from conftest import hidden_leftovers

LM = "model.language_model."
FILES = ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "gslice-manifest.json",
         "model.safetensors", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
         "tokenizer_config.json"]
SKIP = list(range(20, 25))  # a block in the KV-sharing region (20-34)


def with_tokenizer(src: Path) -> Path:
    # gslice copies the tokenizer; the core tier never runs it
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel"}}')
    return src


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """E4B_LIKE (35 layers, the last 15 sharing KV, towers included), two shards, a tokenizer."""
    return with_tokenizer(write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "e4b", E4B_LIKE))


def expected_text(src: Path, **spec) -> dict[str, np.ndarray]:
    """The text decoder of numpy's slice (the towers are not written)."""
    config = json.loads((src / "config.json").read_text())
    return {n: a for n, a in reference_slice(read_checkpoint(src), config, **spec).items() if n.startswith(LM)}


def shard_metadata(folder: Path) -> dict:
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        return f.metadata()


def test_the_layout_mlx_lm_convert_writes(src, tmp_path, cli):
    out = tmp_path / "mlx"
    result = cli("slice", src, "-o", out, "--format", "mlx", "--layers-to-skip", "20-24", "--json")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == FILES  # no processor files, no towers
    assert shard_metadata(out) == {"format": "mlx"}
    assert runtime_of(out) == "mlx-lm"  # how gslice eval recognises an MLX folder
    got, want = read_checkpoint(out), expected_text(src, layers_to_skip=SKIP)
    assert sorted(got) == sorted(want)
    assert all(got[n].dtype == want[n].dtype and np.array_equal(got[n], want[n]) for n in want)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index == {
        "metadata": {"total_parameters": sum(a.size for a in want.values()), "total_size": sum(a.nbytes for a in want.values())},
        "weight_map": {n: "model.safetensors" for n in sorted(want)},
    }
    # config.json: the checkpoint slice's, edited as mlx_lm.convert's save_config does
    hf = tmp_path / "hf"
    assert cli("slice", src, "-o", hf, "--layers-to-skip", "20-24", "-q").code == 0
    config = json.loads((hf / "config.json").read_text())
    del config["vision_config"]
    config["eos_token_id"] = json.loads((src / "generation_config.json").read_text())["eos_token_id"]
    assert (out / "config.json").read_text() == json.dumps(dict(sorted(config.items())), indent=4)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mlx\npipeline_tag: text-generation\nlicense: gemma\ntags:\n")
    assert "mlx_lm.generate --model <this folder>" in card
    report = json.loads(result.out)
    manifest = json.loads((out / "gslice-manifest.json").read_text())
    assert manifest["output_format"] == {"name": "mlx", "bits": None, "group_size": None}
    assert report["format"]["tensors"] == len(want) and report["quantization"] is None
    assert report["format"]["kv_copied_from_producer"] == []


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 32), (4, 64), (8, 64)])
def test_quantized_tensors_are_the_reference_of_mx_quantize(src, tmp_path, bits, group):
    out = tmp_path / "q"
    report = gslice.slice_model(src, out, layers_to_skip=SKIP, format=gslice.MLX(bits, group))
    got, want = read_checkpoint(out), expected_text(src, layers_to_skip=SKIP)
    # mlx_lm.convert -q quantizes every Linear and Embedding whose input width is whole groups;
    # in Gemma 3n's text model (mlx-lm's) every 2-D weight is one of those
    quantized = sorted(n for n, a in want.items() if a.ndim == 2 and a.shape[-1] % group == 0)
    kept = sorted(n for n, a in want.items() if a.ndim == 2 and a.shape[-1] % group)
    assert quantized and sorted(t["name"] for t in report.quantization["tensors"]) == quantized
    assert sorted(k["name"] for k in report.quantization["kept"]) == kept
    for name in want:
        m = name.removesuffix(".weight")
        if name in quantized:
            ref = reference_affine_quantize(want[name], bits, group)
            assert np.array_equal(got[name], ref.words) and got[name].dtype == np.uint32, name
            assert np.array_equal(got[f"{m}.scales"], ref.scales) and np.array_equal(got[f"{m}.biases"], ref.biases), name
        else:
            assert np.array_equal(got[name], want[name]) and f"{m}.scales" not in got, name
    assert len(got) == len(want) + 2 * len(quantized)
    config = json.loads((out / "config.json").read_text())
    block = {"group_size": group, "bits": bits, "mode": "affine"}
    assert (config["quantization"], config["quantization_config"]) == (block, block)
    assert json.loads((out / "gslice-manifest.json").read_text())["output_format"] == {"name": "mlx", "bits": bits, "group_size": group}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_parameters"] == sum(a.size for a in want.values())


def test_the_rope_bases_come_from_rope_parameters(tmp_path):
    """transformers 5 writes rope_parameters only; mlx-lm requires rope_theta and rope_local_base_freq."""
    src = with_tokenizer(write_tiny_checkpoint(tmp_path / "src", E4B_LIKE, shards=1))
    path = src / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg["text_config"]
    del text["rope_theta"], text["rope_local_base_freq"]
    text["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    path.write_text(json.dumps(cfg))
    gslice.slice_model(src, tmp_path / "out", format=gslice.MLX())
    text = json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]
    assert (text["rope_theta"], text["rope_local_base_freq"]) == (1e6, 1e4)
    assert text["rope_parameters"] == cfg["text_config"]["rope_parameters"]


def edited_source(tmp_path: Path, model=E4B_LIKE, edit=None, tokenizer=True) -> Path:
    src = write_tiny_checkpoint(tmp_path / "src", model, shards=1)
    if tokenizer:
        with_tokenizer(src)
    if edit:
        cfg = json.loads((src / "config.json").read_text())
        edit(cfg["text_config"])
        (src / "config.json").write_text(json.dumps(cfg))
    return src


def _scaled(text):
    text["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}


def _scaled_per_type(text):
    text["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}


def _no_rope(text):
    del text["rope_theta"]


def _no_clip(text):
    del text["altup_coef_clip"]


REFUSALS = {
    "no full attention layer": (
        {}, ["--layers-to-skip", "4,9,14,19,24,29,34"],
        "--format mlx: mlx-lm refuses to load it (attention-types): the slice has no full_attention layer, but mlx-lm "
        "looks up its first and last full_attention layer to place the KV caches, so loading fails (ValueError: "
        "'full_attention' is not in list)"),
    "no tokenizer": (
        {"tokenizer": False}, [],
        "--format mlx: the source has no tokenizer (tokenizer.json or tokenizer.model); mlx-lm would load the folder "
        "with an empty 5-token tokenizer without a word of warning"),
    "scaled RoPE": (
        {"edit": _scaled}, [],
        "--format mlx: the source's RoPE is scaled ({'rope_type': 'linear', 'factor': 8.0}); mlx-lm's Gemma 3n applies "
        "plain RoPE, so its logits would be wrong"),
    "scaled RoPE, transformers 5": (
        {"edit": _scaled_per_type}, [],
        "--format mlx: the source's RoPE is scaled ({'rope_type': 'linear', 'factor': 8.0, 'rope_theta': 1000000.0}); "
        "mlx-lm's Gemma 3n applies plain RoPE, so its logits would be wrong"),
    "no RoPE base": (
        {"edit": _no_rope}, [],
        "--format mlx: mlx-lm requires text_config.rope_theta; the source's config.json gives neither it nor "
        "rope_parameters.full_attention.rope_theta"),
    "a field mlx-lm requires": (
        {"edit": _no_clip}, [],
        "--format mlx: mlx-lm requires text_config.altup_coef_clip, which the source's config.json does not give"),
    "F32 weights quantized": (
        {"model": with_changes(E4B_LIKE, dtype="F32")}, ["--mlx-bits", "4"],
        "--format mlx --mlx-bits 4: the source's weights are F32, and gslice writes MLX scales and biases in BF16, as "
        "mlx_lm.convert -q does only for BF16 weights (for F32 weights it keeps F32 scales); quantize a BF16 source, "
        "or write --format mlx without --mlx-bits and run mlx_lm.convert -q on it"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_rule_and_write_nothing(tmp_path, cli, case):
    source_args, args, message = REFUSALS[case]
    src = edited_source(tmp_path, **source_args)
    out = tmp_path / "out"
    result = cli("slice", src, "-o", out, "--format", "mlx", *args)
    assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n")
    assert not out.exists() and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("args,message", [
    (["--mlx-bits", "4"], "--mlx-bits needs --format mlx"),
    (["--format", "gguf", "--mlx-group-size", "64"], "--mlx-group-size needs --format mlx"),
    (["--format", "mlx", "--mlx-group-size", "64"], "--mlx-group-size needs --mlx-bits 4 or 8"),
    (["--format", "mlx", "--mlx-bits", "3"], "--mlx-bits: 3 is not supported (choose 4, 8)"),
    (["--format", "mlx", "--mlx-bits", "4", "--mlx-group-size", "48"], "--mlx-group-size: 48 is not supported (choose 32, 64, 128)"),
    (["--format", "mlx", "--mlx-bits", "four"], "--mlx-bits: 'four' is not an integer (ASCII digits only)"),
    (["--format", "mlx", "--quant", "int4"], "--quant applies to --format safetensors; an MLX folder is quantized with --mlx-bits 4 or 8"),
    (["--format", "mlx", "--gguf-type", "q8_0"], "--gguf-type needs --format gguf"),
])
def test_format_options_are_checked(src, tmp_path, cli, args, message):
    out = tmp_path / "out"
    result = cli("slice", src, "-o", out, *args)
    assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n")
    assert not out.exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 3}, "mlx bits: 3 is not supported (choose 4 or 8)"),
    ({"bits": True}, "mlx bits: True is not supported (choose 4 or 8)"),
    ({"group_size": 64}, "mlx group_size 64 needs bits=4 or 8 (--mlx-bits)"),
    ({"bits": 4, "group_size": 16}, "mlx group_size: 16 is not supported (choose 32, 64, 128)"),
])
def test_the_api_checks_its_options(kwargs, message):
    with pytest.raises(gslice.SpecError) as e:
        gslice.MLX(**kwargs)
    assert str(e.value) == message


def test_sharing_layers_without_k_v_get_their_producers(tmp_path, cli):
    """A transformers >= 4.56 save: the sharing layers' k_proj, v_proj and k_norm are copies of
    their producer's (sliding layers read layer 18, full-attention ones 19; after skipping
    20-24 the sharing layers are 20-29, source 25-34)."""
    src = edited_source(tmp_path, with_changes(E4B_LIKE, store_shared_kv=False))
    out = tmp_path / "out"
    result = cli("slice", src, "-o", out, "--format", "mlx", "--layers-to-skip", "20-24", "--mlx-bits", "4",
                 "--mlx-group-size", "32", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["format"]["kv_copied_from_producer"] == list(range(20, 30))
    got = read_checkpoint(out)
    for layer in range(20, 30):
        producer = 19 if layer % 5 == 4 else 18
        for part in ("self_attn.k_proj.weight", "self_attn.k_proj.scales", "self_attn.k_proj.biases",
                     "self_attn.v_proj.weight", "self_attn.k_norm.weight"):
            assert np.array_equal(got[f"{LM}layers.{layer}.{part}"], got[f"{LM}layers.{producer}.{part}"]), (layer, part)
    assert cli("verify", out, "--against", src).code == 0


def test_tower_options_change_no_tensor_and_no_config(src, tmp_path):
    """The towers are never written, so --text-only (and --drop-*) leave the same model."""
    plain = tmp_path / "plain"
    gslice.slice_model(src, plain, layers_to_skip=SKIP, format=gslice.MLX(4, 32))
    for towers in ({"text_only": True}, {"drop_vision": True}):
        other = tmp_path / next(iter(towers))
        gslice.slice_model(src, other, layers_to_skip=SKIP, format=gslice.MLX(4, 32), **towers)
        for name in ("model.safetensors", "model.safetensors.index.json", "config.json"):
            assert (plain / name).read_bytes() == (other / name).read_bytes(), (towers, name)


def test_verify_and_overwrite(src, tmp_path, cli):
    out = tmp_path / "out"
    args = ("slice", src, "-o", out, "--format", "mlx", "--mlx-bits", "4", "--mlx-group-size", "32", "-q")
    assert cli(*args).code == 0
    got = read_checkpoint(out)
    modules = len(got) - 2 * sum(n.endswith(".scales") for n in got)  # weight + scales + biases count once
    ok = cli("verify", out, "--against", src)
    assert (ok.code, ok.out) == (0, f"{out}: ok (9 files match their sha256; {modules} tensors byte-identical to {src}'s slice)\n")
    exists = cli(*args)
    assert (exists.code, exists.err) == (2, f"error: output path {out} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)\n")
    assert cli(*args, "--overwrite", "--layers-to-skip", "20-24").code == 0
    assert json.loads((out / "config.json").read_text())["text_config"]["num_hidden_layers"] == 30
    # one flipped byte in the packed words: the hash and the re-derived tensor say so
    shard = out / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10
    shard.write_bytes(bytes(data))
    bad = cli("verify", out, "--against", src)
    assert bad.code == 1
    assert bad.out.splitlines()[0] == f"{out}: model.safetensors: sha256 differs from the manifest (the file changed after it was written)"
    assert " bytes differ from the source's slice " in bad.out.splitlines()[1]
    # a folder gslice did not write is never replaced
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    (foreign / "gslice-manifest.json").unlink()
    refused = cli("slice", src, "-o", foreign, "--format", "mlx", "--overwrite")
    assert refused.code == 2 and "refusing to replace it" in refused.err
    assert (foreign / "model.safetensors").read_bytes() == bytes(data)


def test_bulk_writes_shared_tensors_once(src, tmp_path, cli):
    out = tmp_path / "bulk"
    names = "google-e2b,google-main"
    result = cli("bulk", src, "--presets", names, "-o", out, "--format", "mlx", "--mlx-bits", "4", "--mlx-group-size", "32", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["bytes_written"] < report["bytes_if_independent"]
    for slug in names.split(","):
        single = tmp_path / slug
        gslice.slice_model(src, single, preset=slug, format=gslice.MLX(4, 32))
        a, b = read_checkpoint(out / slug), read_checkpoint(single)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a), slug
        assert (out / slug / "config.json").read_bytes() == (single / "config.json").read_bytes()
        for shard in (out / slug).glob("*.safetensors"):
            assert shard_metadata_of(shard) == {"format": "mlx"}
        assert cli("verify", out / slug, "--against", src).code == 0
    again = cli("bulk", src, "--presets", names, "-o", out, "--format", "mlx", "--mlx-bits", "4", "--mlx-group-size", "32",
                "--resume", "--json")
    assert [r["status"] for r in json.loads(again.out)["rows"]] == ["skipped", "skipped"]
    other = cli("bulk", src, "--presets", names, "-o", out, "--format", "mlx", "--resume", "--json")
    assert [r["reason"] for r in json.loads(other.out)["rows"]] == ["it was written in another output format"] * 2


def shard_metadata_of(path: Path) -> dict:
    with safe_open(str(path), "np") as f:
        return f.metadata()


def test_a_dry_run_lists_the_files(src, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("slice", src, "-o", out, "--format", "mlx", "--dry-run")
    assert result.code == 0, result.err
    assert "text decoder only, as mlx_lm.convert writes it: mlx-lm drops the audio and vision towers" in result.out
    for name in FILES:
        assert name in result.out, name
    assert not out.exists()
