"""The GGML type of every tensor of a GGUF file, for representative slices of the published E4B
layout (shapes only), against expectations written out here from llama.cpp's quantizer
(src/llama-quant.cpp at the pinned commit): which layers' attn_v and ffn_down get Q6_K in the
_M mixes (the layer lists below are worked out by hand from ``use_more_bits``), what stays as
the converter wrote it, the token embeddings, the fallbacks for rows that are not whole blocks,
and Q4_0's first-layers Q4_1 with an importance matrix. The interop tier checks the same rules
against llama.cpp's own quantizer, file by file."""

from __future__ import annotations

import re

import pytest

from gslice import gemma3n
from gslice.formats import gguf as gguf_format
from gslice.formats import gguf_types as gt
from gslice.spec import SliceSpec

# blk.{i}.* names of one layer, by what the quantizer does with them
NEVER = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", "post_norm",
         "altup_correct_coef", "altup_correct_scale", "altup_predict_coef", "altup_router", "altup_router_norm",
         "laurel_l", "laurel_r", "laurel_post_norm")
BASE = ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "inp_gate", "proj")
# the converter's bf16 file keeps these at bf16, the rest of NEVER at f32
BF16_KEPT = ("altup_router", "laurel_l", "laurel_r")

# use_more_bits(i, n) for the slices below, worked out by hand: i < n/8, i >= 7n/8, and every
# third layer from n/8 + 2
MORE_BITS = {
    35: [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34],  # n/8 = 4, 7n/8 = 30
    30: [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29],  # n/8 = 3, 7n/8 = 26
    20: [0, 1, 4, 7, 10, 13, 16, 17, 18, 19],  # n/8 = 2, 7n/8 = 17
}


def e4b_types(file_type: str, spec: SliceSpec, imatrix: bool = False) -> dict[str, str]:
    arch = gemma3n.architecture(gemma3n.e4b_config(), "E4B")
    res = gemma3n.resolve(arch, spec)
    shapes = gemma3n.output_shapes(arch, gemma3n.e4b_shapes(), res)
    new_config = gemma3n.rewrite_config(gemma3n.e4b_config(), arch, res)
    tensors = gguf_format.file_tensors(arch, res, shapes, new_config)
    return gt.tensor_types(list(tensors.items()), file_type, "BF16", len(res.kept), imatrix)


def layer_types(types: dict[str, str], part: str) -> list[str]:
    found = sorted((int(m.group(1)), t) for n, t in types.items() if (m := re.fullmatch(rf"blk\.(\d+)\.{part}\.weight", n)))
    return [t for _, t in found]


def expected_layer(mix_base: str, n: int, more: list[int]) -> dict[str, list[str]]:
    out = {part: [mix_base] * n for part in BASE}
    out |= {part: ["bf16" if part in BF16_KEPT else "f32"] * n for part in NEVER}
    out["attn_v"] = ["q6_K" if i in more else mix_base for i in range(n)]
    out["ffn_down"] = list(out["attn_v"])
    return out


MODEL_TENSORS = {  # tensor -> type in every quantizer mix of the published shapes
    "token_embd": "q6_K", "per_layer_token_embd": "q6_K", "per_layer_model_proj": "bf16",
    "per_layer_proj_norm": "f32", "output_norm": "f32", "altup_proj": "bf16", "altup_unembd_proj": "bf16",
}


@pytest.mark.parametrize("file_type,base", [("q4_k_m", "q4_K"), ("q5_k_m", "q5_K")])
@pytest.mark.parametrize("spec,n", [
    (SliceSpec(), 35),  # E4B as published
    (SliceSpec(layers_to_skip=tuple(range(20, 25)), ffn_dims=(8192,) * 30), 30),  # Google's E2B config on E4B
    (SliceSpec(layers_to_skip=tuple(range(20, 35))), 20),  # the first 20 layers
])
def test_the_m_mixes_give_more_bits_to_attn_v_and_ffn_down_by_the_slices_layer_count(file_type, base, spec, n):
    types = e4b_types(file_type, spec)
    for part, want in expected_layer(base, n, MORE_BITS[n]).items():
        assert layer_types(types, part) == want, part
    assert {k: types[f"{k}.weight"] for k in MODEL_TENSORS} == MODEL_TENSORS
    assert len(types) == 24 * n + 7


@pytest.mark.parametrize("file_type,base", [("q6_k", "q6_K"), ("q4_k", "q4_K"), ("q5_k", "q5_K"), ("q4_0", "q4_0")])
def test_the_other_quantizer_types(file_type, base):
    types = e4b_types(file_type, SliceSpec(layers_to_skip=tuple(range(20, 25))))
    for part, want in expected_layer(base, 30, []).items():
        assert layer_types(types, part) == want, part
    # pure files (q4_k, q5_k: llama-quantize --pure) store the embeddings at the base type too
    embd = base if file_type in ("q4_k", "q5_k") else "q6_K"
    assert (types["token_embd.weight"], types["per_layer_token_embd.weight"]) == (embd, embd)
    assert gt.file_type_id(file_type) == {"q6_k": 18, "q4_k": 15, "q5_k": 17, "q4_0": 2}[file_type]


def test_q4_0_with_an_importance_matrix_stores_the_first_eighth_of_ffn_down_as_q4_1():
    types = e4b_types("q4_0", SliceSpec(layers_to_skip=tuple(range(20, 25))), imatrix=True)
    assert layer_types(types, "ffn_down") == ["q4_1"] * 3 + ["q4_0"] * 27  # 30 // 8 = 3
    assert layer_types(e4b_types("q4_k_m", SliceSpec(), imatrix=True), "ffn_down") == layer_types(e4b_types("q4_k_m", SliceSpec()), "ffn_down")


def test_rows_that_are_not_whole_blocks_fall_back():
    # FFN width 8224 = 257 x 32: ffn_down's rows are not whole 256-blocks
    types = e4b_types("q4_k_m", SliceSpec(layers_to_skip=tuple(range(20, 25)), ffn_dims=(8224,) * 30))
    more = MORE_BITS[30]
    assert layer_types(types, "ffn_down") == ["q8_0" if i in more else "q5_0" for i in range(30)]  # Q6_K -> Q8_0, Q4_K -> Q5_0
    assert layer_types(types, "ffn_gate") == ["q4_K"] * 30  # rows of 2048
    assert layer_types(e4b_types("q5_k", SliceSpec(ffn_dims=(8224,) * 35)), "ffn_down") == ["q5_1"] * 35
    # 8200 is not whole 32-blocks either: F16
    assert layer_types(e4b_types("q6_k", SliceSpec(ffn_dims=(8200,) * 35)), "ffn_down") == ["f16"] * 35


def test_the_rules_on_narrow_rows():
    # one layer (so use_more_bits holds: 0 >= 7 * 1 / 8); the token embeddings take Q8_0 when a
    # row is not whole blocks of the base type, else Q6_K; then every type falls back
    names = ("token_embd.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight")
    cases = {
        (2048, "q4_k_m"): ("q6_K", "q6_K", "q6_K"),
        (64, "q4_k_m"): ("q8_0", "q8_0", "q8_0"),  # Q8_0; Q6_K -> Q8_0
        (64, "q4_k"): ("q5_0", "q5_0", "q5_0"),  # pure: Q4_K -> Q5_0
        (64, "q4_0"): ("q8_0", "q4_0", "q4_0"),  # 64 is whole 32-blocks: Q6_K, then Q8_0
        (48, "q4_0"): ("f16", "f16", "f16"),  # Q8_0 and Q4_0 do not fit 48 either
    }
    for (cols, file_type), want in cases.items():
        start = dict.fromkeys(names, "bf16")
        got = gt.quantizer_types([(n, (8, cols)) for n in names], start, gt.MIXES[file_type], n_layer=1, imatrix=False)
        assert got == dict(zip(names, want)), (cols, file_type)


def test_use_more_bits_is_llama_cpps_expression():
    for n, layers in MORE_BITS.items():
        assert [i for i in range(n) if gt.use_more_bits(i, n)] == layers


def test_converter_types_are_unchanged():
    types = e4b_types("q8_0", SliceSpec())
    assert layer_types(types, "ffn_down") == ["q8_0"] * 35
    assert (types["blk.0.attn_norm.weight"], types["blk.0.altup_correct_coef.weight"]) == ("f32", "f32")
    assert types["per_layer_model_proj.weight"] == "q8_0"
