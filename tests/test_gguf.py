"""GGUF outputs (--format gguf), read back with the gguf package's own reader: every key and
value, every tensor's name, shape and GGML type, and every tensor's data against an independent
derivation (numpy slicing of the source, then gguf's reference quantizer for Q8_0 and Q4_0
blocks, numpy conversions for the float types). The names, types and keys expected here are
written out from llama.cpp's converter and quantizer, apart from gslice's mapping; the interop
tier checks the same files against llama.cpp's own conversion and computation."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import pytest

import gslice
from gslice.formats import gguf as gguf_format
from gslice.formats import gguf_tokenizer
from gslice.testing import (
    LLAMA_LIKE,
    as_float32,
    read_checkpoint,
    reference_slice,
    with_changes,
    write_sentencepiece,
    write_tiny_checkpoint,
)

from conftest import hidden_leftovers

LM = "model.language_model."
# HF name within a decoder layer -> llama.cpp's name within blk.{i}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
    "altup.correction_coefs.weight": "altup_correct_coef.weight",
    "altup.correct_output_scale": "altup_correct_scale.weight",
    "altup.prediction_coefs.weight": "altup_predict_coef.weight",
    "altup.modality_router.weight": "altup_router.weight",
    "altup.router_norm.weight": "altup_router_norm.weight",
    "laurel.linear_left.weight": "laurel_l.weight",
    "laurel.linear_right.weight": "laurel_r.weight",
    "laurel.post_laurel_norm.weight": "laurel_post_norm.weight",
}
MODEL = {
    "embed_tokens.weight": "token_embd.weight",
    "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
    "norm.weight": "output_norm.weight",
}
VOCAB = LLAMA_LIKE.vocab  # 320: the text vocabulary, tokenizer and both embedding tables
SKIP = [21, 23]  # within the KV-sharing region 20-24: llama.cpp computes this slice correctly


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory) -> Path:
    """LLAMA_LIKE (25 layers, the last 5 sharing KV, towers included) with a SentencePiece tokenizer."""
    src = write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "llama", LLAMA_LIKE, shards=2)
    assert write_sentencepiece(src, 300) == 300
    return src


def expected_arrays(src: Path, layers_to_skip=(), widths=None) -> dict[str, np.ndarray]:
    """llama.cpp's tensors as float32, from numpy slicing of the source: renamed, the AltUp
    projections stacked, the two embedding tables padded with zero rows to the vocabulary."""
    config = json.loads((src / "config.json").read_text())
    sliced = reference_slice(read_checkpoint(src), config, layers_to_skip, widths)
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, list] = {}
    for name, a in sorted(sliced.items()):
        if not name.startswith(LM):
            continue  # towers: llama.cpp's Gemma 3n is text-only
        rest, a = name[len(LM):], as_float32(a)
        if m := re.match(r"layers\.(\d+)\.(.+)", rest):
            out[f"blk.{m.group(1)}.{LAYER[m.group(2)]}"] = a
        elif m := re.match(r"(altup_projections|altup_unembed_projections)\.(\d+)\.weight", rest):
            stacks.setdefault(m.group(1), []).append((int(m.group(2)), a))
        else:
            gname = MODEL[rest]
            if gname in ("token_embd.weight", "per_layer_token_embd.weight"):
                a = np.concatenate([a, np.zeros((VOCAB - a.shape[0], a.shape[1]), np.float32)])
            out[gname] = a
    for family, gname in (("altup_projections", "altup_proj.weight"), ("altup_unembed_projections", "altup_unembd_proj.weight")):
        out[gname] = np.stack([a for _, a in sorted(stacks[family])])
    return out


# The quantizer's types: (base type, its fallback for rows that are not whole 256-blocks, pure).
MIXES = {"q4_0": ("Q4_0", "Q4_0", False), "q4_k_m": ("Q4_K", "Q5_0", False), "q5_k_m": ("Q5_K", "Q5_1", False),
         "q6_k": ("Q6_K", "Q8_0", False), "q4_k": ("Q4_K", "Q5_0", True), "q5_k": ("Q5_K", "Q5_1", True)}
# Layers of the 23-layer slice whose attn_v and ffn_down get Q6_K in the _M mixes (llama.cpp's
# use_more_bits: i < 23/8 = 2, i >= 7*23/8 = 20, or (i - 2) % 3 == 2).
MORE_BITS_23 = {0, 1, 4, 7, 10, 13, 16, 19, 20, 21, 22}


def type_for(name: str, a: np.ndarray, file_type: str) -> str:
    """The converter's and quantizer's choice, written out: vectors, norms and AltUp's
    coefficients f32. For the quantizer's types (from the converter's bf16 file) AltUp, LAuReL
    and the PLE projection stay bf16; the embedding tables are Q6_K (Q8_0 when rows are not
    whole blocks of the base type), or the base type in a pure file; in the _M mixes attn_v
    and ffn_down of MORE_BITS_23 are Q6_K; a row that is not whole blocks falls back (Q6_K to
    Q8_0, Q4_K to Q5_0, Q5_K to Q5_1)."""
    if a.ndim == 1 or name.endswith("_norm.weight") or name.endswith(("altup_correct_coef.weight", "altup_predict_coef.weight")):
        return "F32"
    if file_type not in MIXES:
        return file_type.upper()
    if any(k in name for k in ("altup", "laurel", "per_layer_model_proj")):
        return "BF16"
    base, fallback, pure = MIXES[file_type]
    block = 32 if base == "Q4_0" else 256
    cols = a.shape[-1]
    if pure:
        chosen = base
    elif name in ("token_embd.weight", "per_layer_token_embd.weight"):
        chosen = "Q8_0" if cols % block else "Q6_K"
    elif file_type.endswith("_m") and re.fullmatch(r"blk\.(\d+)\.(attn_v|ffn_down)\.weight", name) and int(name.split(".")[1]) in MORE_BITS_23:
        chosen = "Q6_K"
    else:
        chosen = base
    if chosen in ("Q4_K", "Q5_K", "Q6_K") and cols % 256:
        return {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}[chosen]
    return chosen


def encode(a: np.ndarray, ggml: str) -> bytes:
    """The reference bytes: numpy conversions and the gguf package's quantizers."""
    if ggml == "F32":
        return a.astype(np.float32).tobytes()
    return gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType[ggml]).tobytes()


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def expected_keys(file_type: int, kept: list[int], shared: int) -> dict:
    """Every key llama.cpp's converter writes for this model (plus gslice's), with its value
    (None: checked apart)."""
    n = len(kept)
    sparse = float(np.float32(1.6448536269514722))  # the normal quantile of 0.95, as a float32
    return {
        "general.architecture": "gemma3n",
        "general.type": "model",
        "general.name": None,
        "general.size_label": None,
        "general.license": "gemma",
        "general.tags": ["gslice", "matformer", "gemma3n"],
        "general.file_type": file_type,
        "general.quantization_version": 2,
        "gemma3n.block_count": n,
        "gemma3n.context_length": 32768,
        "gemma3n.embedding_length": 64,
        "gemma3n.feed_forward_length": [128] * n,
        "gemma3n.attention.head_count": 2,
        "gemma3n.attention.head_count_kv": 1,
        "gemma3n.rope.freq_base": 1e6,
        "gemma3n.rope.freq_base_swa": 1e4,
        "gemma3n.attention.layer_norm_rms_epsilon": float(np.float32(1e-6)),
        "gemma3n.attention.key_length": 32,
        "gemma3n.attention.value_length": 32,
        "gemma3n.final_logit_softcapping": 30.0,
        "gemma3n.attention.sliding_window": 512,
        "gemma3n.altup.active_idx": 0,
        "gemma3n.altup.num_inputs": 4,
        "gemma3n.embedding_length_per_layer_input": 256,
        "gemma3n.attention.shared_kv_layers": shared,
        "gemma3n.activation_sparsity_scale": [sparse if i < 10 else -math.inf for i in kept],
        "gemma3n.attention.sliding_window_pattern": [(i + 1) % 5 != 0 for i in kept],
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": None,
        "tokenizer.ggml.scores": None,
        "tokenizer.ggml.token_type": None,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.chat_template": None,
        "gslice.manifest": None,
    }


FILE_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32, "q4_k_m": 15, "q4_k": 15, "q5_k_m": 17, "q5_k": 17,
                 "q6_k": 18}


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0", "f32", "f16", "bf16", "q4_k_m", "q5_k_m", "q6_k", "q4_k", "q5_k"])
def test_every_key_and_tensor_reads_back_as_llama_cpp_writes_it(llama_src, tmp_path, file_type):
    out = tmp_path / "slice.gguf"
    report = gslice.slice_model(llama_src, out, layers_to_skip=SKIP, format=gslice.GGUF(file_type))
    reader = gguf.GGUFReader(out)
    got = fields(reader)
    kept = [i for i in range(25) if i not in SKIP]
    want = expected_keys(FILE_TYPE_IDS[file_type], kept, 3)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert np.array_equal(np.array(got[key], np.float32), np.array(value, np.float32)), key
        else:
            assert got[key] == value, key
    assert got["general.name"] == "slice"
    assert got["tokenizer.chat_template"] == (llama_src / "chat_template.jinja").read_text()
    tokens = got["tokenizer.ggml.tokens"]
    assert len(tokens) == len(got["tokenizer.ggml.scores"]) == len(got["tokenizer.ggml.token_type"]) == VOCAB
    assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"] and tokens[300:] == [f"[PAD{i}]" for i in range(300, VOCAB)]
    assert got["tokenizer.ggml.token_type"][3] == gguf.TokenType.UNKNOWN and got["tokenizer.ggml.token_type"][0] == gguf.TokenType.CONTROL

    want_arrays = expected_arrays(llama_src, SKIP)
    stored = {t.name: t for t in reader.tensors}
    assert sorted(stored) == sorted(want_arrays)
    assert len(stored) == 23 * len(LAYER) + len(MODEL) + 2
    for name, a in want_arrays.items():
        t = stored[name]
        ggml = type_for(name, a, file_type)
        assert (t.tensor_type.name, [int(d) for d in reversed(t.shape)]) == (ggml, list(a.shape)), name
        data = t.data.tobytes()
        if ggml in K_ERROR:  # gguf has no K-quant quantizer: the interop tier compares with llama.cpp's
            back = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType[ggml]).reshape(a.shape)
            assert np.abs(back - a).max() <= np.abs(a).max() * K_ERROR[ggml], name
        else:
            assert data == encode(a, ggml), name
    types = Counter(type_for(n, a, file_type).lower() for n, a in want_arrays.items())
    assert report.format["tensor_types"] == {re.sub(r"_k$", "_K", t): n for t, n in sorted(types.items())}


# The largest error of a K-quant block relative to its largest magnitude: about half a step of
# 15, 31 or 63 levels, with the scales' own 6-bit (8-bit for Q6_K) rounding on top.
K_ERROR = {"Q4_K": 1 / 12, "Q5_K": 1 / 24, "Q6_K": 1 / 30}


def test_the_ownership_marker_and_verify(llama_src, tmp_path, cli):
    out = tmp_path / "m.gguf"
    result = cli("slice", llama_src, "-o", out, "--format", "gguf", "--gguf-type", "q8_0", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    manifest = json.loads(gguf.GGUFReader(out).fields["gslice.manifest"].contents())
    assert manifest["format"] == "gslice-manifest/1" and manifest["output_format"] == {"name": "gguf", "type": "q8_0"}
    assert manifest["spec"]["layers_to_skip"] == []
    raw = out.read_bytes()
    digest = manifest["file_sha256"]
    assert report["files"] == [{"name": "m.gguf", "bytes": len(raw), "sha256": digest}]
    assert hashlib.sha256(raw.replace(digest.encode(), b"0" * 64)).hexdigest() == digest
    ok = cli("verify", out, "--against", llama_src)
    assert (ok.code, ok.out) == (0, f"{out}: ok (1 files match their sha256; 607 tensors byte-identical to {llama_src}'s slice)\n")
    # one flipped bit in the last tensor's data: the digest and the re-derived tensor say so
    damaged = bytearray(raw)
    damaged[-40] ^= 0x01
    out.write_bytes(bytes(damaged))
    bad = cli("verify", out, "--against", llama_src)
    assert bad.code == 1
    lines = bad.out.splitlines()
    assert lines[0] == f"{out}: sha256 differs from the manifest (the file changed after it was written)"
    assert re.fullmatch(rf"{re.escape(str(out))}: tensor \S+ bytes differ from the source's slice \(first difference at byte \d+ of the tensor\)", lines[1])
    assert cli("verify", out).out == f"{out}: sha256 differs from the manifest (the file changed after it was written)\n"


def test_the_guard_refuses_what_llama_cpp_computes_wrong(llama_src, tmp_path, cli):
    out = tmp_path / "m.gguf"
    result = cli("slice", llama_src, "-o", out, "--format", "gguf", "--layers-to-skip", "12")
    assert result.code == 2 and result.out == ""
    assert result.err == (
        "error: --format gguf: llama.cpp aborts the whole process when it creates a context (kv-sharing-start): layer 12 "
        "is skipped, which moves the KV-sharing start off layer 20 to layer 19 (llama.cpp fixes it at 20, producers 18 and 19)\n"
    )
    block = cli("slice", llama_src, "-o", out, "--format", "gguf", "--layers-to-skip", "10-14")
    assert block.err.startswith("error: --format gguf: llama.cpp loads it and computes wrong logits without an error (kv-sharing-start): ")
    assert len(block.err.splitlines()) == 1
    widths = cli("slice", llama_src, "-o", out, "--format", "gguf", "--ffn-dims", ",".join(["128"] * 12 + ["64"] * 13))
    assert widths.code == 2 and widths.err.startswith("error: --format gguf: llama.cpp refuses to load it (ffn-width): layer 12 has FFN width 64")
    assert len(widths.err.splitlines()) == 1
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    # the same slices as safetensors are fine for transformers
    assert cli("slice", llama_src, "-o", tmp_path / "st", "--layers-to-skip", "12", "-q").code == 0


ALL_TYPES = "f32, bf16, f16, q8_0, q6_k, q5_k_m, q5_k, q4_k_m, q4_k, q4_0"


@pytest.mark.parametrize("args,message", [
    (["--gguf-type", "q8_0"], "--gguf-type needs --format gguf"),
    (["--imatrix", "m.gguf"], "--imatrix needs --format gguf"),
    (["--format", "gguf", "--quant", "int4"], f"--quant applies to --format safetensors; a GGUF file's type is --gguf-type ({ALL_TYPES})"),
    (["--format", "gguf", "--gguf-type", "q4_k_s"], f"gguf type: 'q4_k_s' is not supported (choose {ALL_TYPES})"),
    (["--format", "gguf", "--gguf-type", "q8_0", "--imatrix", "m.gguf"],
     "--imatrix: a q8_0 file is written as llama.cpp's converter writes it, which reads no importance matrix "
     "(give one of q6_k, q5_k_m, q5_k, q4_k_m, q4_k, q4_0)"),
    (["--format", "gguf", "--imatrix", "m.gguf"],
     "--imatrix: a source-dtype file is written as llama.cpp's converter writes it, which reads no importance matrix "
     "(give one of q6_k, q5_k_m, q5_k, q4_k_m, q4_k, q4_0)"),
])
def test_format_options_are_checked(llama_src, tmp_path, cli, args, message):
    out = tmp_path / "m.gguf"
    result = cli("slice", llama_src, "-o", out, *args)
    assert (result.code, result.err, result.out) == (2, f"error: {message}\n", "")
    assert not out.exists()


def test_sharing_layers_without_k_v_are_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "new", with_changes(LLAMA_LIKE, store_shared_kv=False), shards=1)
    write_sentencepiece(src, 300)
    result = cli("slice", src, "-o", tmp_path / "m.gguf", "--format", "gguf")
    assert result.code == 2
    assert result.err == (
        "error: GGUF: llama.cpp needs self_attn.k_proj.weight, self_attn.v_proj.weight, self_attn.k_norm.weight for every "
        "layer, the KV-sharing ones too (it never reads them), but source layer 20 has none (a checkpoint saved by "
        "transformers >= 4.56 drops them; the published checkpoints store them)\n"
    )


def test_the_size_from_shapes_is_the_data_section(llama_src, tmp_path):
    for file_type in ("q8_0", "q4_0", "bf16", "q4_k_m", "q5_k"):
        out = tmp_path / f"{file_type}.gguf"
        gslice.slice_model(llama_src, out, layers_to_skip=SKIP, format=gslice.GGUF(file_type))
        reader = gguf.GGUFReader(out)
        plan = gslice.prepare_slice(llama_src, gslice.SliceSpec(layers_to_skip=tuple(SKIP)))
        predicted = gguf_format.file_tensor_bytes(plan.arch, plan.resolved, plan.output_shapes(), plan.new_config, file_type)
        assert predicted == out.stat().st_size - reader.data_offset, file_type


def test_bulk_writes_one_gguf_file_per_preset(tmp_path, cli):
    # the E2B shape (30 layers, the last 10 sharing KV) at llama.cpp's sizes; google-e2b skips 20-24
    src = write_tiny_checkpoint(tmp_path / "src", with_changes(LLAMA_LIKE, num_layers=35, num_kv_shared=15, audio=False, vision=False))
    write_sentencepiece(src, 300)
    out = tmp_path / "bulk"
    result = cli("bulk", src, "--presets", "google-e2b", "-o", out, "--format", "gguf", "--gguf-type", "q8_0", "-q")
    assert result.code == 0, result.err
    single = tmp_path / "single.gguf"
    gslice.slice_model(src, single, preset="google-e2b", format=gslice.GGUF("q8_0"))
    a, b = gguf.GGUFReader(out / "google-e2b.gguf"), gguf.GGUFReader(single)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert all(x.data.tobytes() == y.data.tobytes() for x, y in zip(a.tensors, b.tensors))
    assert sorted(p.name for p in out.iterdir()) == ["google-e2b.gguf"]
    again = cli("bulk", src, "--presets", "google-e2b", "-o", out, "--format", "gguf", "--gguf-type", "q8_0", "--resume", "--json")
    assert json.loads(again.out)["rows"][0]["status"] == "skipped"


def test_overwrite_replaces_only_a_gguf_file_gslice_wrote(llama_src, tmp_path, cli):
    out = tmp_path / "m.gguf"
    args = ("slice", llama_src, "-o", out, "--format", "gguf", "--gguf-type", "q8_0", "-q")
    assert cli(*args).code == 0
    first = out.read_bytes()
    exists = cli(*args)
    assert (exists.code, exists.err) == (2, f"error: output path {out} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)\n")
    assert cli(*args, "--overwrite", "--layers-to-skip", "21").code == 0
    assert out.read_bytes() != first and gguf.GGUFReader(out).fields["gemma3n.block_count"].contents() == 24
    # a GGUF file without gslice's manifest (written by the gguf package itself) is someone else's
    foreign = tmp_path / "foreign.gguf"
    w = gguf.GGUFWriter(str(foreign), "gemma3n")
    w.add_block_count(1)
    w.add_tensor("t", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    before = foreign.read_bytes()
    refused = cli("slice", llama_src, "-o", foreign, "--format", "gguf", "--overwrite")
    assert (refused.code, refused.err) == (2, f"error: output path {foreign} is a file gslice did not write; refusing to replace it\n")
    assert foreign.read_bytes() == before and hidden_leftovers(tmp_path) == []


def test_tokenizer_json_is_read_without_its_model(tmp_path):
    """gguf's SpecialVocab reads tokenizer.json for its added tokens and post-processor only;
    gslice hands it the file without the vocabulary (E4B's is 33 MB, 190 MB once parsed)."""
    doc = {
        "version": "1.0",
        "added_tokens": [{"id": 2, "content": "<bos>", "special": True}, {"id": 5, "content": 'a "}]{[" b\\', "special": False}],
        "model": {"type": "BPE", "vocab": {"{": 0, "}": 1, '"': 2, "\\": 3, "[[": 4}, "merges": [["{", "}"]]},
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>"}}]},
        "decoder": None,
    }
    path = tmp_path / "tokenizer.json"
    for text in (json.dumps(doc), json.dumps(doc, indent=2)):
        path.write_text(text)
        assert gguf_tokenizer.tokenizer_json_without_model(path) == {k: v for k, v in doc.items() if k != "model"}
