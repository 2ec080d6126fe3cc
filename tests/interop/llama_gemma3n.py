"""Tiny random Gemma 3n text models at the sizes llama.cpp's Gemma 3n fixes in code (AltUp 4,
LAuReL rank 64, 256 per-layer input values, KV sharing from layer 20 on with producers 18
and 19, activation sparsity on layers 0-9), saved as published checkpoints are, with a
SentencePiece tokenizer made here; and transformers runs of GGUF weights read back.

Two things the published checkpoints have and a model saved by transformers >= 4.56 does not
are added to the saved source: k/v projections and k_norm for the KV-sharing layers (llama.cpp
requires them; it never reads them, so zeros do).

The random weights are gentle: a random Gemma 3n with weights of order one is chaotic (its
attention is unscaled, and every norm restores unit scale), so that rounding noise of 1e-7
comes out as differences of 0.02 to 0.9 in the logits. Here q/k norms are drawn in
[0.025, 0.075], other vectors in [0.25, 0.75], matrices with standard deviation
0.5 / sqrt(fan-in), and the token embeddings 8 times larger, so that the logits spread over a
few units (standard deviation about 2) while the model stays stable.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

from gslice.testing import write_sentencepiece

VOCAB = 320  # the text vocabulary: embeddings, tokenizer
VOCAB_PER_LAYER = 300  # the per-layer embedding table's rows (the tokenizer's own pieces)
TEXT = "the quick brown fox\none two three"


def config(num_layers: int = 25, num_kv_shared: int = 5, ffn: int = 128) -> Gemma3nTextConfig:
    return Gemma3nTextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB_PER_LAYER, hidden_size=64, intermediate_size=ffn,
        num_hidden_layers=num_layers, num_kv_shared_layers=num_kv_shared, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, hidden_size_per_layer_input=256, laurel_rank=64, altup_num_inputs=4,
        sliding_window=8, max_position_embeddings=512,
        layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(num_layers)],
        activation_sparsity_pattern=[0.95 if i < 10 else 0.0 for i in range(num_layers)],
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


@torch.no_grad()
def build(num_layers: int = 25, num_kv_shared: int = 5, ffn: int = 128, seed: int = 0) -> Gemma3nForCausalLM:
    """A random model in fp32 whose every weight is a BF16 value (so the BF16 checkpoint holds
    exactly the model transformers runs)."""
    torch.manual_seed(seed)
    cfg = config(num_layers, num_kv_shared, ffn)
    cfg.architectures = ["Gemma3nForCausalLM"]
    model = Gemma3nForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim == 1:
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.25)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(0.1)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 / math.sqrt(math.prod(p.shape[1:])))
        if name.endswith("embed_tokens.weight"):
            p.mul_(8.0)
        p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model.to(torch.float32).eval()


def save_source(model: Gemma3nForCausalLM, path: Path) -> Path:
    """The model as a published-style BF16 checkpoint with a tokenizer (see the module docstring)."""
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)
    weights = load_file(path / "model.safetensors")
    cfg = model.config
    for i in range(cfg.num_hidden_layers - cfg.num_kv_shared_layers, cfg.num_hidden_layers):
        for part in ("k_proj", "v_proj", "k_norm"):
            like = weights[f"model.layers.0.self_attn.{part}.weight"]
            weights.setdefault(f"model.layers.{i}.self_attn.{part}.weight", torch.zeros_like(like))
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    assert write_sentencepiece(path, VOCAB_PER_LAYER) == VOCAB_PER_LAYER
    return path


def prompt_ids(src: Path) -> list[int]:
    """TEXT tokenized by the source's SentencePiece model, with BOS (id 2)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return [2, *sp.encode(TEXT)]


@torch.no_grad()
def logits(model: nn.Module, ids: Sequence[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0].float().numpy()


@torch.no_grad()
def greedy(model: nn.Module, ids: Sequence[int], new_tokens: int) -> list[int]:
    out = model.generate(input_ids=torch.tensor([list(ids)]), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, use_cache=True)
    return out[0].tolist()


# -- GGUF weights back into transformers -----------------------------------------------------

# llama.cpp's name within blk.{i} -> the module's parameter within layers.{i}
LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "inp_gate.weight": "per_layer_input_gate.weight",
    "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
    "altup_correct_coef.weight": "altup.correction_coefs.weight",
    "altup_correct_scale.weight": "altup.correct_output_scale",
    "altup_predict_coef.weight": "altup.prediction_coefs.weight",
    "altup_router.weight": "altup.modality_router.weight",
    "altup_router_norm.weight": "altup.router_norm.weight",
    "laurel_l.weight": "laurel.linear_left.weight",
    "laurel_r.weight": "laurel.linear_right.weight",
    "laurel_post_norm.weight": "laurel.post_laurel_norm.weight",
}
MODEL = {
    "token_embd.weight": "embed_tokens.weight",
    "per_layer_token_embd.weight": "embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "per_layer_projection_norm.weight",
    "output_norm.weight": "norm.weight",
}


@torch.no_grad()
def load_gguf_weights(model: Gemma3nForCausalLM, path: Path) -> list[str]:
    """Puts every tensor of a GGUF file, dequantized by the gguf package, into ``model`` (the
    module-level slice it was made from); returns the parameters the file did not set."""
    import gguf

    params = dict(model.model.named_parameters())
    seen = set()
    for t in gguf.GGUFReader(path).tensors:
        values = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
        shape = [int(d) for d in reversed(t.shape)]
        values = values.reshape(shape)
        if m := re.fullmatch(r"blk\.(\d+)\.(.+)", t.name):
            targets = [(f"layers.{m.group(1)}.{LAYER[m.group(2)]}", values)]
        elif t.name in ("altup_proj.weight", "altup_unembd_proj.weight"):
            family = "altup_projections" if t.name == "altup_proj.weight" else "altup_unembed_projections"
            targets = [(f"{family}.{k}.weight", values[k]) for k in range(values.shape[0])]
        else:
            targets = [(MODEL[t.name], values)]
        for name, v in targets:
            if name not in params:  # k/v of a KV-sharing layer: transformers has no such module
                continue
            p = params[name]
            p.copy_(v[: p.shape[0]])  # the embedding tables were padded to the vocabulary
            seen.add(name)
    return sorted(set(params) - seen)


# -- transformers with llama.cpp's numerics ---------------------------------------------------
#
# llama.cpp computes the same model with a few different roundings, which random tiny models
# amplify (0.7-2.9 on logits capped at 30, measured here): its activation sparsity divides by
# n - 1 in the standard deviation (transformers by n), its GELU reads a table of f16 values
# indexed by the f16 input (GGML_GELU_FP16), and its matrix products round the activations to
# the weight's "vec_dot" type first: bf16 for bf16 weights, f16 for f16, q8_0 blocks (32 values,
# an f16 scale) for q8_0 and q4_0 weights. `llama_numerics` makes transformers do the same, so
# that what remains is summation order.

_GELU_K = math.sqrt(2.0 / math.pi)


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _gelu_f16_table(x: torch.Tensor) -> torch.Tensor:
    """ggml_vec_gelu_f32 with GGML_GELU_FP16: table[f16(x)], the table holding f16(gelu(v))."""
    v = _f16(x)
    y = _f16(0.5 * v * (1.0 + torch.tanh(_GELU_K * v * (1.0 + 0.044715 * v * v))))
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


class _GeluF16Table(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gelu_f16_table(x)


def _q8_0_round_trip(x: torch.Tensor) -> torch.Tensor:
    """quantize_row_q8_0 then back: per block of 32, q = round(x * 127 / amax) (half to even),
    times the block's scale f16(amax / 127)."""
    shape = x.shape
    b = x.reshape(-1, 32)
    amax = b.abs().amax(dim=1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(b * inv) * _f16(amax / 127.0)).reshape(shape)


_ROUNDING = {
    "F32": None,
    "BF16": lambda x: x.to(torch.bfloat16).to(torch.float32),
    "F16": _f16,
    "Q8_0": _q8_0_round_trip,
    "Q4_0": _q8_0_round_trip,
}


def _topk_n_minus_1(self, inputs: torch.Tensor) -> torch.Tensor:
    std_multiplier = torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(self.activation_sparsity))
    mean = torch.mean(inputs, dim=-1, keepdim=True)
    std = torch.std(inputs, dim=-1, keepdim=True, unbiased=True)
    return nn.functional.relu(inputs - (mean + std * std_multiplier))


def llama_numerics(model: Gemma3nForCausalLM, path: Path) -> Gemma3nForCausalLM:
    """A copy of ``model`` computing with llama.cpp's roundings for the tensor types of the GGUF
    file at ``path`` (see above). Its weights are the model's: load the file's first for a
    quantized file."""
    import copy
    import types

    import gguf

    model = copy.deepcopy(model)
    kinds = {}
    for t in gguf.GGUFReader(path).tensors:
        if m := re.fullmatch(r"blk\.(\d+)\.(.+)", t.name):
            kinds[f"layers.{m.group(1)}.{LAYER[m.group(2)]}"] = t.tensor_type.name
        elif t.name in ("altup_proj.weight", "altup_unembd_proj.weight"):
            family = "altup_projections" if t.name == "altup_proj.weight" else "altup_unembed_projections"
            for k in range(3):
                kinds[f"{family}.{k}.weight"] = t.tensor_type.name
        else:
            kinds[MODEL[t.name]] = t.tensor_type.name
    for name, module in model.model.named_modules():
        if isinstance(module, nn.Linear):
            rounding = _ROUNDING[kinds[f"{name}.weight"]]
            if rounding is not None:
                module.register_forward_pre_hook(lambda _m, args, r=rounding: (r(args[0]),))
        if hasattr(module, "_gaussian_topk"):
            module._gaussian_topk = types.MethodType(_topk_n_minus_1, module)
        if hasattr(module, "act_fn"):
            module.act_fn = _GeluF16Table()
    head = _ROUNDING[kinds["embed_tokens.weight"]]  # the output is the tied token embeddings
    if head is not None:
        model.lm_head.register_forward_pre_hook(lambda _m, args: (head(args[0]),))
    return model
