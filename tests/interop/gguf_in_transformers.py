"""transformers computing what a GGUF file holds, as llama.cpp computes it: the file's tensors
(dequantized by the gguf package) put back into the module-level slice they were made from, and
llama.cpp's roundings imitated, so that comparing llama.cpp's logits with transformers' measures
gslice's file rather than two implementations (tests/interop/test_gguf_llama_cpp.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import Gemma3nForCausalLM


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
