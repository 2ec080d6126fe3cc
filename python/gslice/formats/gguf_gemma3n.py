"""Gemma 3n in GGUF: the mapping from a slice to llama.cpp's ``gemma3n`` architecture, in one
place. It follows what llama.cpp's own converter writes (``convert_hf_to_gguf.py``,
``Gemma3NModel``, at the commit llama-cpp-python 0.3.36 vendors) and what its loader reads
(``src/models/gemma3n.cpp``):

* names: the table below (``blk.{i}.attn_q.weight`` for a layer's ``self_attn.q_proj.weight``...);
* transforms: AltUp's three projections (and the three unembedding projections) are stacked
  into one [3, H, H] tensor each; ``token_embd`` and ``per_layer_token_embd`` get zero rows up to
  the text vocabulary ``vocab_size``, the size of the tokenizer written beside them (llama.cpp
  requires the three to agree; the published per-layer table stops at
  ``vocab_size_per_layer_input``);
* metadata: every ``gemma3n.*`` key the converter writes, with the slice's per-layer arrays
  (feed-forward widths, sliding-window pattern, sparsity scales) and KV-sharing count.

Only the text decoder: llama.cpp's Gemma 3n model is text-only (its converter skips the audio
and vision towers). llama.cpp needs the k/v projections of every layer, the KV-sharing ones too,
which it never reads; the published checkpoints store them (checkpoints saved by transformers
>= 4.56 do not, and are refused here with that reason).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .. import gemma3n
from ..errors import SourceError
from .base import SlicedTensor

if TYPE_CHECKING:
    from ..slicing import SlicePlan

ARCH = "gemma3n"

# A decoder layer's tensors: role kind -> name after "blk.{i}.".
LAYER_NAMES = {
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
# Model-level tensors.
MODEL_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
    "norm.weight": "output_norm.weight",
}
# Numbered families stacked into one tensor, in index order.
STACKED_NAMES = {
    "altup_projections.weight": "altup_proj.weight",
    "altup_unembed_projections.weight": "altup_unembd_proj.weight",
}
# Tables padded with zero rows up to the text vocabulary.
PADDED_TO_VOCAB = ("token_embd.weight", "per_layer_token_embd.weight")
# What llama.cpp requires of every layer although KV-sharing layers never read it.
KV_KINDS = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the GGUF file: its sources (several for a stack), in the slice's terms."""

    name: str
    sources: tuple[SlicedTensor, ...]
    pad_rows: int | None = None


def tensors(plan: "SlicePlan") -> list[GgufTensor]:
    """The text decoder's tensors under llama.cpp's names, stacked and padded as its converter
    does; refuses a slice missing a tensor llama.cpp requires."""
    vocab = vocab_size(plan)
    out: list[GgufTensor] = []
    families: dict[str, list[SlicedTensor]] = {}
    for t in plan.sliced:
        role = t.role
        if role.part != "text":
            continue
        if role.layer is not None:
            out.append(GgufTensor(f"blk.{role.layer}.{_layer_name(t)}", (t,)))
        elif role.kind in STACKED_NAMES:
            families.setdefault(role.kind, []).append(t)
        elif role.kind in MODEL_NAMES:
            name = MODEL_NAMES[role.kind]
            out.append(GgufTensor(name, (t,), vocab if name in PADDED_TO_VOCAB else None))
        else:
            raise SourceError(f"tensor {t.name} has no place in llama.cpp's Gemma 3n (GGUF)")
    for kind, members in families.items():
        members.sort(key=lambda t: t.role.index)
        out.append(GgufTensor(STACKED_NAMES[kind], tuple(members)))
    _check_kv(plan, out)
    return out


def _layer_name(t: SlicedTensor) -> str:
    name = LAYER_NAMES.get(t.role.kind)
    if name is None:
        raise SourceError(f"tensor {t.name} has no place in llama.cpp's Gemma 3n (GGUF)")
    return name


def _check_kv(plan: "SlicePlan", out: Sequence[GgufTensor]) -> None:
    names = {t.name for t in out}
    for layer in range(len(plan.resolved.kept)):
        missing = [k for k in KV_KINDS if f"blk.{layer}.{LAYER_NAMES[k]}" not in names]
        if missing:
            source_layer = plan.resolved.kept[layer]
            raise SourceError(
                f"GGUF: llama.cpp needs {', '.join(missing)} for every layer, the KV-sharing ones too (it never "
                f"reads them), but source layer {source_layer} has none (a checkpoint saved by transformers >= 4.56 "
                "drops them; the published checkpoints store them)"
            )


def vocab_size(plan: "SlicePlan") -> int:
    """The text vocabulary: the rows of ``token_embd``, ``per_layer_token_embd`` and the tokenizer."""
    text = gemma3n.text_config(plan.new_config)
    return int(text.get("vocab_size", 262_400))


# -- metadata -----------------------------------------------------------------------------


def add_metadata(w, plan: "SlicePlan", file_type) -> None:
    """The ``gemma3n.*`` keys and the file type, as the converter writes them, for the slice
    (``w`` is a gguf.GGUFWriter used as a key-value builder)."""
    text = gemma3n.text_config(plan.new_config)
    rope = _rope(text)
    w.add_block_count(text["num_hidden_layers"])
    w.add_context_length(text.get("max_position_embeddings", 131072))
    w.add_embedding_length(text["hidden_size"])
    w.add_feed_forward_length(list(text["intermediate_size"]))
    w.add_head_count(text.get("num_attention_heads", 8))
    w.add_head_count_kv(text.get("num_key_value_heads", 4))
    w.add_rope_freq_base(rope.get("full_attention", rope).get("rope_theta", 1_000_000.0))
    if (local := rope.get("sliding_attention", {}).get("rope_theta")) is not None:
        w.add_rope_freq_base_swa(local)
    w.add_layer_norm_rms_eps(text.get("rms_norm_eps", 1e-6))
    w.add_key_length(text.get("head_dim", 256))
    w.add_value_length(text.get("head_dim", 256))
    w.add_file_type(file_type)
    if softcap := text.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(softcap)
    if text.get("sliding_window_pattern") != 1:
        w.add_sliding_window(text["sliding_window"])
    w.add_altup_active_idx(text.get("altup_active_idx", 0))
    w.add_altup_num_inputs(text.get("altup_num_inputs", 4))
    w.add_embedding_length_per_layer_input(text["hidden_size_per_layer_input"])
    w.add_shared_kv_layers(text["num_kv_shared_layers"])
    w.add_activation_sparsity_scale([sparsity_scale(s) for s in text["activation_sparsity_pattern"]])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in text["layer_types"]])


def _rope(text: dict) -> dict:
    """The converter's ``rope_parameters``: transformers 5 configs carry them per attention
    type; older ones (the published checkpoints) give ``rope_theta`` and ``rope_local_base_freq``."""
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    if "full_attention" not in rope and "sliding_attention" not in rope:
        if (local := text.get("rope_local_base_freq")) is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rope and (theta := text.get("rope_theta")) is not None:
            rope["rope_theta"] = theta
    return rope


def sparsity_scale(s: float) -> float:
    """The standard normal quantile of an activation sparsity target, as a float32 (the
    converter's ``Normal(0, 1).icdf(s)``): 0.95 -> 1.6448536, 0 -> -inf."""
    if s <= 0:
        return -math.inf
    if s >= 1:
        return math.inf
    return float(_f32(statistics.NormalDist().inv_cdf(s)))


def _f32(x: float):
    import numpy as np

    return np.float32(x)
