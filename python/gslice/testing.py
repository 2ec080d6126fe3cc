"""Tiny Gemma 3n checkpoints with the published tensor naming, written without torch, and an
independent numpy reader and reference slicer to check gslice's output against.

The default :class:`TinyGemma3n` mirrors E4B's structure (35 layers, the last 15 sharing KV,
a full-attention layer every fifth, PLE, altup, laurel, a 12-block audio Conformer, a vision
tower and both embedders) at widths small enough to write in milliseconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors

__all__ = [
    "TinyGemma3n",
    "E4B_LIKE",
    "E2B_LIKE",
    "LLAMA_LIKE",
    "write_sentencepiece",
    "write_tiny_checkpoint",
    "read_checkpoint",
    "reference_slice",
    "reference_quantize",
    "reference_affine_quantize",
    "affine_edge_weights",
    "as_float32",
    "write_safetensors",
]


@dataclass(frozen=True)
class TinyGemma3n:
    num_layers: int = 35
    num_kv_shared: int = 15
    hidden: int = 32
    ffn: int | tuple[int, ...] = 64
    ple_dim: int = 8
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 16
    vocab: int = 300
    vocab_per_layer: int = 256
    laurel_rank: int = 4
    altup: int = 4
    audio_hidden: int = 16
    audio_blocks: int = 12
    audio_heads: int = 2
    vision_hidden: int = 24
    # The published checkpoints store k/v projections for KV-sharing layers too.
    store_shared_kv: bool = True
    dtype: str = "BF16"
    vision: bool = True
    audio: bool = True
    extra: dict = field(default_factory=dict)

    def widths(self) -> list[int]:
        f = self.ffn
        return list(f) if isinstance(f, tuple) else [f] * self.num_layers

    def layer_types(self) -> list[str]:
        return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(self.num_layers)]


E4B_LIKE = TinyGemma3n()
# E2B as published: 30 layers, the last 10 sharing KV, FFN half of E4B's.
E2B_LIKE = TinyGemma3n(num_layers=30, num_kv_shared=10, ffn=32)
# At the sizes llama.cpp's Gemma 3n fixes in code (AltUp 4, LAuReL rank 64, 256 per-layer input
# values, KV sharing from layer 20 on with producers 18 and 19, sparsity on layers 0-9), small
# elsewhere, with widths that are whole GGML blocks; 25 layers, the last 5 sharing KV.
LLAMA_LIKE = TinyGemma3n(num_layers=25, num_kv_shared=5, hidden=64, ffn=128, ple_dim=256, heads=2, kv_heads=1,
                         head_dim=32, vocab=320, vocab_per_layer=300, laurel_rank=64, audio_hidden=32)


def tensor_shapes(m: TinyGemma3n) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape, following the published E4B layout."""
    H, P, L = m.hidden, m.ple_dim, m.num_layers
    lm = "model.language_model."
    s: dict[str, tuple[int, ...]] = {
        lm + "embed_tokens.weight": (m.vocab, H),
        lm + "embed_tokens_per_layer.weight": (m.vocab_per_layer, L * P),
        lm + "per_layer_model_projection.weight": (L * P, H),
        lm + "per_layer_projection_norm.weight": (P,),
        lm + "norm.weight": (H,),
    }
    for k in range(m.altup - 1):
        s[f"{lm}altup_projections.{k}.weight"] = (H, H)
        s[f"{lm}altup_unembed_projections.{k}.weight"] = (H, H)
    first_shared = L - m.num_kv_shared
    for i, F in enumerate(m.widths()):
        b = f"{lm}layers.{i}."
        s.update({
            b + "altup.correct_output_scale": (H,),
            b + "altup.correction_coefs.weight": (m.altup, m.altup),
            b + "altup.modality_router.weight": (m.altup, H),
            b + "altup.prediction_coefs.weight": (m.altup * m.altup, m.altup),
            b + "altup.router_norm.weight": (H,),
            b + "input_layernorm.weight": (H,),
            b + "laurel.linear_left.weight": (m.laurel_rank, H),
            b + "laurel.linear_right.weight": (H, m.laurel_rank),
            b + "laurel.post_laurel_norm.weight": (H,),
            b + "mlp.down_proj.weight": (H, F),
            b + "mlp.gate_proj.weight": (F, H),
            b + "mlp.up_proj.weight": (F, H),
            b + "per_layer_input_gate.weight": (P, H),
            b + "per_layer_projection.weight": (H, P),
            b + "post_attention_layernorm.weight": (H,),
            b + "post_feedforward_layernorm.weight": (H,),
            b + "post_per_layer_input_norm.weight": (H,),
            b + "pre_feedforward_layernorm.weight": (H,),
            b + "self_attn.o_proj.weight": (H, m.heads * m.head_dim),
            b + "self_attn.q_norm.weight": (m.head_dim,),
            b + "self_attn.q_proj.weight": (m.heads * m.head_dim, H),
        })
        if i < first_shared or m.store_shared_kv:
            s[b + "self_attn.k_norm.weight"] = (m.head_dim,)
            s[b + "self_attn.k_proj.weight"] = (m.kv_heads * m.head_dim, H)
            s[b + "self_attn.v_proj.weight"] = (m.kv_heads * m.head_dim, H)
    if m.audio:
        s.update(_audio_shapes(m))
    if m.vision:
        s.update(_vision_shapes(m))
    return s


def _audio_shapes(m: TinyGemma3n) -> dict[str, tuple[int, ...]]:
    A, H = m.audio_hidden, m.hidden
    c0, c1 = 8, 4
    s = {
        "model.audio_tower.subsample_conv_projection.conv_0.conv.weight": (c0, 1, 3, 3),
        "model.audio_tower.subsample_conv_projection.conv_0.norm.weight": (c0,),
        "model.audio_tower.subsample_conv_projection.conv_1.conv.weight": (c1, c0, 3, 3),
        "model.audio_tower.subsample_conv_projection.conv_1.norm.weight": (c1,),
        "model.audio_tower.subsample_conv_projection.input_proj_linear.weight": (A, c1 * 4),
        "model.embed_audio.embedding.weight": (128, A),
        "model.embed_audio.embedding_projection.weight": (H, A),
        "model.embed_audio.hard_embedding_norm.weight": (A,),
        "model.embed_audio.soft_embedding_norm.weight": (A,),
    }
    for i in range(m.audio_blocks):
        b = f"model.audio_tower.conformer.{i}."
        s.update({
            b + "attention.attn.k_proj.weight": (A, A),
            b + "attention.attn.per_dim_scale": (A // m.audio_heads,),
            b + "attention.attn.q_proj.weight": (A, A),
            b + "attention.attn.relative_position_embedding.pos_proj.weight": (A, A),
            b + "attention.attn.v_proj.weight": (A, A),
            b + "attention.post.weight": (A, A),
            b + "attention.post_norm.weight": (A,),
            b + "attention.pre_attn_norm.weight": (A,),
            b + "ffw_layer_end.ffw_layer_1.weight": (4 * A, A),
            b + "ffw_layer_end.ffw_layer_2.weight": (A, 4 * A),
            b + "ffw_layer_end.post_layer_norm.weight": (A,),
            b + "ffw_layer_end.pre_layer_norm.weight": (A,),
            b + "ffw_layer_start.ffw_layer_1.weight": (4 * A, A),
            b + "ffw_layer_start.ffw_layer_2.weight": (A, 4 * A),
            b + "ffw_layer_start.post_layer_norm.weight": (A,),
            b + "ffw_layer_start.pre_layer_norm.weight": (A,),
            b + "lconv1d.conv_norm.weight": (A,),
            b + "lconv1d.depthwise_conv1d.weight": (A, 1, 5),
            b + "lconv1d.linear_end.weight": (A, A),
            b + "lconv1d.linear_start.weight": (2 * A, A),
            b + "lconv1d.pre_layer_norm.weight": (A,),
            b + "norm.weight": (A,),
        })
    return s


def _vision_shapes(m: TinyGemma3n) -> dict[str, tuple[int, ...]]:
    V, H = m.vision_hidden, m.hidden
    t = "model.vision_tower.timm_model."
    return {
        t + "conv_stem.conv.weight": (8, 3, 3, 3),
        t + "conv_stem.conv.bias": (8,),
        t + "conv_stem.bn.weight": (8,),
        t + "blocks.0.0.conv_exp.weight": (16, 8, 3, 3),
        t + "blocks.0.0.bn1.weight": (16,),
        t + "blocks.0.0.conv_pwl.weight": (8, 16, 1, 1),
        t + "blocks.0.0.bn2.weight": (8,),
        t + "blocks.1.0.attn.query.proj.weight": (V, 8, 1, 1),
        t + "blocks.1.0.layer_scale.gamma": (8,),
        t + "msfa.ffn.pw_exp.conv.weight": (V, 8, 1, 1),
        t + "msfa.norm.weight": (V,),
        "model.embed_vision.embedding.weight": (128, V),
        "model.embed_vision.embedding_projection.weight": (H, V),
        "model.embed_vision.hard_embedding_norm.weight": (V,),
        "model.embed_vision.soft_embedding_norm.weight": (V,),
    }


def config(m: TinyGemma3n) -> dict:
    """A config.json shaped like the published E4B one, at the tiny sizes."""
    L = m.num_layers
    text = {
        "activation_sparsity_pattern": [0.95] * min(10, L) + [0.0] * max(0, L - 10),
        "altup_active_idx": 0,
        "altup_coef_clip": 120.0,
        "altup_correct_scale": True,
        "altup_num_inputs": m.altup,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "final_logit_softcapping": 30.0,
        "head_dim": m.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": m.hidden,
        "hidden_size_per_layer_input": m.ple_dim,
        "initializer_range": 0.02,
        "intermediate_size": m.widths(),
        "laurel_rank": m.laurel_rank,
        "layer_types": m.layer_types(),
        "max_position_embeddings": 32768,
        "model_type": "gemma3n_text",
        "num_attention_heads": m.heads,
        "num_hidden_layers": L,
        "num_key_value_heads": m.kv_heads,
        "num_kv_shared_layers": m.num_kv_shared,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_theta": 1000000.0,
        "sliding_window": 512,
        "torch_dtype": "bfloat16",
        "vocab_size": m.vocab,
        "vocab_size_per_layer_input": m.vocab_per_layer,
    }
    cfg: dict = {
        "architectures": ["Gemma3nForConditionalGeneration"],
        "model_type": "gemma3n",
        "text_config": text,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.53.0",
    }
    if m.audio:
        cfg["audio_config"] = {
            "model_type": "gemma3n_audio",
            "hidden_size": m.audio_hidden,
            "conf_num_hidden_layers": m.audio_blocks,
            "conf_num_attention_heads": m.audio_heads,
            "input_feat_size": 16,
            "sscp_conv_channel_size": [8, 4],
            "vocab_size": 128,
        }
    if m.vision:
        cfg["vision_config"] = {
            "model_type": "gemma3n_vision",
            "architecture": "mobilenetv5_300m_enc",
            "hidden_size": m.vision_hidden,
            "vocab_size": 128,
        }
    cfg.update(m.extra)
    return cfg


_SIDE_FILES = {
    "tokenizer_config.json": json.dumps({"model_max_length": 32768, "tokenizer_class": "GemmaTokenizer"}),
    "special_tokens_map.json": json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "generation_config.json": json.dumps({"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}),
    "chat_template.jinja": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}",
    "processor_config.json": json.dumps({"processor_class": "Gemma3nProcessor"}),
}


def random_bf16(rng: np.random.Generator, shape: Sequence[int], scale: float = 0.05) -> np.ndarray:
    """Valid, finite bf16 values, as uint16 bit patterns (numpy has no bf16)."""
    f = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
    bits = f.view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
    return (rounded >> 16).astype(np.uint16)


def write_tiny_checkpoint(
    path: str | Path, model: TinyGemma3n = E4B_LIKE, shards: int = 2, seed: int = 0
) -> Path:
    """Writes config, side files and weights (split over ``shards`` files) into ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = sorted(tensor_shapes(model).items())
    arrays = {}
    for name, shape in names:
        if model.dtype == "BF16":
            arrays[name] = ("BF16", random_bf16(rng, shape))
        else:
            arrays[name] = ("F32", (rng.standard_normal(shape, dtype=np.float32) * 0.05))
    groups = [names[k::shards] for k in range(shards)] if shards > 1 else [names]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        specs = {n: _spec(*arrays[n]) for n, _ in group}
        safetensors.serialize_file(specs, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n, _ in group})
    if shards > 1:
        total = sum(a.nbytes for _, a in arrays.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config(model), indent=2))
    for fname, text in _SIDE_FILES.items():
        (out / fname).write_text(text)
    return out


TOKENIZER_TEXT = (
    "the quick brown fox jumps over the lazy dog\n"
    "gemma slices smaller models out of a bigger one, on a laptop without a GPU\n"
    "one two three four five six seven eight nine ten eleven twelve\n"
) * 20


def sentencepiece_model(vocab: int) -> bytes:
    """A tiny SentencePiece BPE model (at most ``vocab`` pieces: 4 special, 256 bytes, merges)
    trained on TOKENIZER_TEXT, set up as Gemma's own: Gemma's special ids (pad 0, eos 1, bos 2,
    unk 3), byte fallback (a character it has no piece for, "\n" among them, becomes its UTF-8
    bytes), text kept as it is (identity normalization, no extra whitespace removed, no dummy
    prefix), so that transformers' GemmaTokenizer and llama.cpp tokenize any text as it does."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_TEXT.splitlines()), model_writer=buf, vocab_size=vocab, model_type="bpe",
        hard_vocab_limit=False, normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        add_dummy_prefix=False, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", minloglevel=2, num_threads=1,
    )
    return buf.getvalue()


def write_sentencepiece(path: str | Path, vocab: int) -> int:
    """Writes :func:`sentencepiece_model` as ``path``/tokenizer.model and names its special ids
    in config.json (the ``*_token_id`` fields llama.cpp's converter reads) and
    tokenizer_config.json. Returns the model's own vocabulary size (<= ``vocab``; the rest of
    the ids are unused)."""
    import sentencepiece as spm

    out = Path(path)
    model = sentencepiece_model(vocab)
    (out / "tokenizer.model").write_bytes(model)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "unk_token_id": 3}
    config.update(ids)
    if "text_config" in config:
        config["text_config"].update(ids)
    config_path.write_text(json.dumps(config, indent=2))
    tok = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
           "pad_token": "<pad>", "unk_token": "<unk>", "tokenizer_class": "GemmaTokenizer"}
    (out / "tokenizer_config.json").write_text(json.dumps(tok))
    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def write_safetensors(path: str | Path, arrays: dict[str, tuple[str, np.ndarray]]) -> Path:
    """One safetensors file of ``name -> (dtype, array)``; BF16 arrays are uint16 bit patterns."""
    arrays = {n: (d, np.ascontiguousarray(a)) for n, (d, a) in arrays.items()}
    specs = {n: _spec(d, a) for n, (d, a) in arrays.items()}
    safetensors.serialize_file(specs, str(path), metadata={"format": "pt"})
    return Path(path)


def _spec(dtype: str, array: np.ndarray) -> "safetensors.TensorSpec":
    # The array stays referenced by the caller while the file is written.
    return safetensors.TensorSpec(
        dtype={"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
        shape=array.shape,
        data_ptr=array.ctypes.data,
        data_len=array.nbytes,
    )


# -- reading, and the reference slicer ----------------------------------------------------

_NP = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "I32": np.int32, "U32": np.uint32, "I64": np.int64,
       "U8": np.uint8}


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder, parsed by the reference safetensors implementation
    (BF16 comes back as uint16 bit patterns: numpy has no bfloat16)."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        for name, t in safetensors.deserialize(f.read_bytes()):
            out[name] = np.frombuffer(t["data"], dtype=_NP[t["dtype"]]).reshape(t["shape"])
    return out


def reference_slice(
    src: dict[str, np.ndarray],
    config: dict,
    layers_to_skip: Sequence[int] = (),
    widths: Sequence[int] | None = None,
    audio_layers_to_skip: Sequence[int] = (),
    drop_vision: bool = False,
    drop_audio: bool = False,
) -> dict[str, np.ndarray]:
    """The slicing rules of docs/design.md applied with numpy to whole arrays. Written separately
    from gslice's planner so that tests compare two independent derivations."""
    text = config.get("text_config", config)
    L, P = text["num_hidden_layers"], text["hidden_size_per_layer_input"]
    kept = [i for i in range(L) if i not in set(layers_to_skip)]
    widths = list(widths) if widths is not None else [text["intermediate_size"][i] for i in kept]
    n_audio = config.get("audio_config", {}).get("conf_num_hidden_layers", 0)
    audio_kept = [i for i in range(n_audio) if i not in set(audio_layers_to_skip)]
    text_only = drop_vision and drop_audio
    lm = "model.language_model."
    out: dict[str, np.ndarray] = {}
    for name, a in src.items():
        if drop_vision and name.startswith(("model.vision_tower.", "model.embed_vision.")):
            continue
        if drop_audio and name.startswith(("model.audio_tower.", "model.embed_audio.")):
            continue
        if m := re.match(r"model\.audio_tower\.conformer\.(\d+)\.(.*)", name):
            if int(m.group(1)) in audio_kept:
                out[f"model.audio_tower.conformer.{audio_kept.index(int(m.group(1)))}.{m.group(2)}"] = a
            continue
        new_name = ("model." + name[len(lm):]) if (text_only and name.startswith(lm)) else name
        prefix = "model." if text_only else lm
        if m := re.match(re.escape(lm) + r"layers\.(\d+)\.(.*)", name):
            i, rest = int(m.group(1)), m.group(2)
            if i not in kept:
                continue
            j = kept.index(i)
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                a = a[: widths[j], :]
            elif rest == "mlp.down_proj.weight":
                a = a[:, : widths[j]]
            out[f"{prefix}layers.{j}.{rest}"] = np.ascontiguousarray(a)
        elif name == lm + "embed_tokens_per_layer.weight":
            out[new_name] = np.concatenate([a[:, i * P : (i + 1) * P] for i in kept], axis=1)
        elif name == lm + "per_layer_model_projection.weight":
            out[new_name] = np.concatenate([a[i * P : (i + 1) * P, :] for i in kept], axis=0)
        else:
            out[new_name] = a
    return out


def with_changes(model: TinyGemma3n, **kw) -> TinyGemma3n:
    return replace(model, **kw)


def compare_to_reference(src_dir: str | Path, out_dir: str | Path, **spec) -> list[str]:
    """Differences between gslice's output and :func:`reference_slice` (empty when equal)."""
    src_config = json.loads((Path(src_dir) / "config.json").read_text())
    expected = reference_slice(read_checkpoint(src_dir), src_config, **spec)
    got = read_checkpoint(out_dir)
    problems = [f"missing tensor {n}" for n in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected tensor {n}" for n in sorted(got.keys() - expected.keys())]
    for name in sorted(expected.keys() & got.keys()):
        e, g = expected[name], got[name]
        if e.dtype != g.dtype or e.shape != g.shape or e.tobytes() != g.tobytes():
            problems.append(f"{name}: expected {e.dtype}{list(e.shape)}, got {g.dtype}{list(g.shape)} or other bytes")
    return problems


# -- the reference quantizer --------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (torch's conversion)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def as_float32(a: np.ndarray) -> np.ndarray:
    """Values of a tensor read by :func:`read_checkpoint` (BF16 arrives as uint16 bits)."""
    return bf16_bits_to_f32(a) if a.dtype == np.uint16 else a.astype(np.float32)


@dataclass(frozen=True)
class QuantizedReference:
    packed: np.ndarray  # int32 [rows, ceil(cols * bits / 32)]
    scales: np.ndarray  # uint16 bf16 bits [rows, cols / group]
    shape: np.ndarray  # int64 [2]
    q: np.ndarray  # int8 [rows, cols]
    dequantized: np.ndarray  # float32 q * scale, exact
    weight_rms: float
    rms_error: float
    max_abs_error: float


def reference_quantize(w: np.ndarray, bits: int, group_size: int) -> QuantizedReference:
    """compressed-tensors 0.20's symmetric group quantization and int32 packing, in numpy.

    * ``calculate_qparams``: min and max per group, widened to include 0; scale =
      max(|min|, |max|) / ((qmax - qmin) / 2) in float32, kept in the scale dtype (BF16);
      a zero scale becomes that dtype's epsilon (2**-7);
    * ``quantize``: round(clamp(w / scale, qmin, qmax)), torch.round rounding half to even
      (np.rint does too), with w / scale in float32;
    * ``pack_to_int32``: q + 2**(bits-1) as unsigned fields, element i of a row at bit
      i * bits of its little-endian words, the row zero-padded to whole words.
    """
    w = as_float32(w)
    rows, cols = w.shape
    assert cols % group_size == 0, (cols, group_size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    groups = w.reshape(rows, cols // group_size, group_size)
    lo = np.minimum(groups.min(axis=2), np.float32(0))
    hi = np.maximum(groups.max(axis=2), np.float32(0))
    absmax = np.maximum(-lo, hi)
    scales = f32_to_bf16_bits(absmax / np.float32((qmax - qmin) / 2))
    scales[scales == 0] = 0x3C00
    s = bf16_bits_to_f32(scales)[:, :, None]
    q = np.rint(np.clip(groups / s, qmin, qmax)).astype(np.int8)
    deq = (q.astype(np.float32) * s).reshape(rows, cols)  # from the integers: no -0.0
    q = q.reshape(rows, cols)
    per = 32 // bits
    fields = (q.astype(np.int64) + 2 ** (bits - 1)).astype(np.uint64)
    pad = (-cols) % per
    fields = np.pad(fields, ((0, 0), (0, pad))).reshape(rows, -1, per)
    words = np.zeros(fields.shape[:2], dtype=np.uint64)
    for k in range(per):
        words |= fields[:, :, k] << np.uint64(bits * k)
    err = w.astype(np.float64) - deq.astype(np.float64)
    return QuantizedReference(
        packed=words.astype(np.uint32).view(np.int32),
        scales=scales,
        shape=np.array([rows, cols], dtype=np.int64),
        q=q,
        dequantized=deq,
        weight_rms=float(np.sqrt(np.mean(w.astype(np.float64) ** 2))),
        rms_error=float(np.sqrt(np.mean(err**2))),
        max_abs_error=float(np.abs(err).max()),
    )


@dataclass(frozen=True)
class AffineReference:
    words: np.ndarray  # uint32 [rows, cols * bits / 32]
    scales: np.ndarray  # uint16 bf16 bits [rows, cols / group]
    biases: np.ndarray  # uint16 bf16 bits [rows, cols / group]
    scales_f32: np.ndarray  # float32: the step the values were rounded with
    biases_f32: np.ndarray
    q: np.ndarray  # uint8 [rows, cols], 0 .. 2**bits - 1
    dequantized: np.ndarray  # float32 q * bf16(scale) + bf16(bias), in float32
    weight_rms: float
    rms_error: float
    max_abs_error: float


def reference_affine_quantize(w: np.ndarray, bits: int, group_size: int) -> AffineReference:
    """``mx.quantize`` (mlx 0.32, CPU) in numpy: affine group quantization, all in float32.

    Per row and group, n = 2**bits - 1: ``lo, hi`` = min, max; if ``|lo| > |hi|`` the step is
    ``s = max((hi - lo) / n, 1e-7)`` and the edge ``lo``, otherwise ``s = -max(...)`` and the
    edge ``hi``; ``q0 = rint(edge / s)`` (half to even); if ``q0 != 0`` then ``s = edge / q0``
    and the bias is the edge, else the bias is 0; ``q = clip(rint((w - bias) / s), 0, n)``
    with that float32 ``s``. Scales and biases are stored as bf16 (round to nearest even);
    32 / bits values per uint32 word, element k at bits ``k * bits``. The dequantized values
    (for the error figures) are ``q * bf16(s) + bf16(bias)`` in float32, and each error
    ``w - dequantized`` is also taken in float32.
    """
    w = as_float32(w)
    rows, cols = w.shape
    assert cols % group_size == 0 and (cols * bits) % 32 == 0, (cols, group_size, bits)
    top = np.float32(2**bits - 1)
    groups = w.reshape(rows, cols // group_size, group_size)
    lo, hi = groups.min(axis=2), groups.max(axis=2)
    step = np.maximum((hi - lo) / top, np.float32(1e-7))
    negative_edge = np.abs(lo) > np.abs(hi)
    s = np.where(negative_edge, step, -step).astype(np.float32)
    edge = np.where(negative_edge, lo, hi).astype(np.float32)
    q0 = np.rint(edge / s)
    on_grid = q0 != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(on_grid, edge / np.where(on_grid, q0, np.float32(1)), s).astype(np.float32)
    b = np.where(on_grid, edge, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((groups - b[..., None]) / s[..., None]), 0, top).astype(np.uint8)
    scales, biases = f32_to_bf16_bits(s), f32_to_bf16_bits(b)
    deq = q.astype(np.float32) * bf16_bits_to_f32(scales)[..., None] + bf16_bits_to_f32(biases)[..., None]
    err = (groups - deq).reshape(rows, cols).astype(np.float64)
    q = q.reshape(rows, cols)
    per = 32 // bits
    fields = q.astype(np.uint32).reshape(rows, -1, per)
    words = np.zeros(fields.shape[:2], dtype=np.uint32)
    for k in range(per):
        words |= fields[:, :, k] << np.uint32(bits * k)
    return AffineReference(
        words=words,
        scales=scales,
        biases=biases,
        scales_f32=s,
        biases_f32=b,
        q=q,
        dequantized=deq.reshape(rows, cols),
        weight_rms=float(np.sqrt(np.mean(w.astype(np.float64) ** 2))),
        rms_error=float(np.sqrt(np.mean(err**2))),
        max_abs_error=float(np.abs(err).max()),
    )


def affine_edge_weights(rows_of_noise: int = 6, cols: int = 256, seed: int = 0) -> np.ndarray:
    """float32 weights whose groups reach every branch of the affine rule (for any group size
    of 32, 64 or 128), then ``rows_of_noise`` rows of small random values. The crafted values
    are exact in BF16 (and in F16, except the subnormals, which F16 flushes to zero).

    Rows: all zeros; zeros of both signs; a positive constant; a negative constant; ties of
    ``(w - bias) / s`` for 4 bits (s = 1, bias = -8) and for 8 bits (s = 1, bias = -128); a
    tie of ``edge / s`` (14.5 / -1 -> q0 = -14); negative-dominant and positive-dominant
    groups; BF16 subnormals; one huge value among small ones.
    """
    rng = np.random.default_rng(seed)

    def tiled(pattern) -> np.ndarray:
        p = np.asarray(pattern, dtype=np.float32)
        return np.resize(p, cols)

    small = (rng.standard_normal(32) * 0.02).astype(np.float32)
    rows = [
        np.zeros(cols, np.float32),
        tiled([0.0, -0.0, -0.0, 0.0]),
        tiled([0.375]),
        tiled([-3.0]),
        tiled([-8.0, 7.0, *(np.arange(15) - 7.5)]),
        tiled([-128.0, 127.0, *(np.arange(30) * 8 - 127.5)]),
        tiled([14.5, -0.5, 0.0, 3.0]),
        tiled(-np.abs(small) * 0.5 + np.float32(0.001)),
        tiled(np.abs(small) - np.float32(0.002)),
        tiled(np.arange(-16, 16) * np.float32(2.0**-133)),
        tiled([300.0, *small[:31]]),
    ]
    rows += list((rng.standard_normal((rows_of_noise, cols)) * 0.02).astype(np.float32))
    return np.stack(rows)
