"""The GGML type of every tensor of a GGUF file, as llama.cpp's own tools choose it for the same
file type (at the commit llama-cpp-python 0.3.36 vendors), in one place:

* f32, f16, bf16, q8_0: what its converter writes (``convert_hf_to_gguf.py --outtype``):
  :func:`converter_type`;
* q4_0, q4_k_m, q5_k_m, q6_k, and the pure q4_k, q5_k: what its quantizer (``llama-quantize``,
  ``llama_model_quantize``, ``src/llama-quant.cpp``) writes when run on the converter's lossless
  output (``--outtype`` bf16, f16 or f32: the source's own dtype, so the quantizer reads the
  source's values): :func:`quantizer_types`. q4_k and q5_k are ``llama-quantize --pure``
  with Q4_K / Q5_K (llama.cpp's own "Q4_K" and "Q5_K" without ``--pure`` are aliases of
  Q4_K_M and Q5_K_M).

The quantizer's choices for Gemma 3n, with the lines of ``src/llama-quant.cpp`` they follow
(Gemma 3n has no ``output.weight``: llama.cpp treats its embeddings as tied; no experts; not
Falcon, not a 70B):

=====================================  =====================================================
tensor                                 type
=====================================  =====================================================
vectors, norms, anything not a         unchanged: the converter's type (``tensor_allows_
``weight``; AltUp, LAuReL,             quantization``, 287-362: n_dims < 2, ``_norm.weight``,
``per_layer_model_proj``               ``altup``, ``laurel``, ``per_layer_model_proj``)
``token_embd``,                        the output's type (tied embeddings, 490-512): Q8_0 when a
``per_layer_token_embd``               row is not whole blocks of the file's base type, else
                                       Q6_K (Q8_0 stays Q8_0); pure files: the base type
``attn_v`` (Q4_K_M, Q5_K_M)            Q6_K where ``use_more_bits(i, n_attn_v)`` (590-591)
``ffn_down`` (Q4_K_M, Q5_K_M)          Q6_K where ``use_more_bits(i, n_layer)`` (646-657)
``ffn_down`` (Q4_0, importance         Q4_1 in layers ``i < n_layer / 8`` (660-667)
matrix given)
everything else                        the base type (``llama_ftype_get_default_type``, 881)
a row that is not whole blocks         the fallback (``tensor_type_fallback``, 390-442): Q4_K
of the chosen type                     -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; F16 when that does
                                       not fit either (a 32-element type falls to F16 directly)
=====================================  =====================================================

``use_more_bits(i, n)`` (452-454) is ``i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2`` in integer
arithmetic: it depends on the slice's layer count. ``i`` counts the tensors of a category in
llama.cpp's order (by layer, then by name: ``weight_name_comparer``, ``src/llama-model-loader.h``
54-65), which for Gemma 3n's one ``attn_v`` and one ``ffn_down`` per layer is the layer index.
A tensor whose chosen type equals its type in the converter's file is copied unchanged (1238).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..engine import GGML_BLOCKS


@dataclass(frozen=True)
class Mix:
    """One of llama.cpp's quantizer file types, for Gemma 3n."""

    ftype: int  # llama_ftype: general.file_type
    base: str  # llama_ftype_get_default_type
    pure: bool = False  # llama-quantize --pure: no per-tensor choices, fallbacks only
    more_bits: tuple[str, ...] = ()  # categories that get Q6_K where use_more_bits
    first_down: str | None = None  # ffn_down of layers < n_layer / 8, with an importance matrix


MIXES = {
    "q4_0": Mix(2, "q4_0", first_down="q4_1"),
    "q4_k_m": Mix(15, "q4_K", more_bits=("attn_v", "ffn_down")),
    "q5_k_m": Mix(17, "q5_K", more_bits=("attn_v", "ffn_down")),
    "q6_k": Mix(18, "q6_K"),
    "q4_k": Mix(15, "q4_K", pure=True),
    "q5_k": Mix(17, "q5_K", pure=True),
}
CONVERTER_TYPES = ("f32", "bf16", "f16", "q8_0")
# llama.cpp's LlamaFileType of the converter's file types (general.file_type).
CONVERTER_FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
# The converter's lossless output for a source dtype: what the quantizer starts from.
LOSSLESS_TYPE = {"BF16": "bf16", "F16": "f16", "F32": "f32"}
FALLBACK = {"q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}
TOKEN_EMBEDDINGS = ("token_embd.weight", "per_layer_token_embd.weight")
_LAYER = re.compile(r"blk\.(\d+)\.")


def file_type_id(file_type: str) -> int:
    """general.file_type of a file type."""
    return MIXES[file_type].ftype if file_type in MIXES else CONVERTER_FTYPES[file_type]


def tensor_types(tensors: Sequence[tuple[str, Sequence[int]]], file_type: str, source_dtype: str, n_layer: int,
                 imatrix: bool = False) -> dict[str, str]:
    """The GGML type of every tensor (name -> type) of a file of ``file_type`` holding
    ``tensors`` (llama.cpp name, shape outermost first) of ``n_layer`` blocks, for a source of
    ``source_dtype``; ``imatrix``: whether the quantizer is given an importance matrix."""
    if file_type not in MIXES:
        return {name: converter_type(name, shape, file_type) for name, shape in tensors}
    start = {name: converter_type(name, shape, LOSSLESS_TYPE[source_dtype]) for name, shape in tensors}
    return quantizer_types(tensors, start, MIXES[file_type], n_layer, imatrix)


def converter_type(name: str, shape: Sequence[int], file_type: str) -> str:
    """``convert_hf_to_gguf.py`` (``ModelBase.prepare_tensors``): vectors, norms, non-weights
    and AltUp's coefficient matrices in f32; the rest in the file type, a q8_0 row that is not
    whole blocks of 32 in f16 (its QuantError fallback)."""
    base = name.rsplit(".", 1)[0]
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "f32"
    if base.endswith((".altup_correct_coef", ".altup_predict_coef")):
        return "f32"
    if file_type == "q8_0" and shape[-1] % 32:
        return "f16"
    return file_type


def quantizer_types(tensors: Sequence[tuple[str, Sequence[int]]], start: dict[str, str], mix: Mix, n_layer: int,
                    imatrix: bool) -> dict[str, str]:
    """``llama_tensor_get_type`` for every tensor, in llama.cpp's order (its counters run in
    it); ``start`` holds each tensor's type in the file the quantizer reads."""
    ordered = sorted(tensors, key=lambda t: (_layer(t[0]), t[0]))
    n_attn_v = sum(1 for name, _ in tensors if _category(name) == "attn_v")
    seen = {"attn_v": 0, "ffn_down": 0}
    out = {}
    for name, shape in ordered:
        if not quantizer_allows(name, shape):
            out[name] = start[name]
            continue
        category = _category(name)
        new = mix.base if mix.pure else _mixed(mix, category, shape[-1], seen, n_attn_v, n_layer, imatrix)
        if category in seen and not mix.pure:
            seen[category] += 1
        out[name] = _fallback(new, shape[-1])
    return out


def quantizer_allows(name: str, shape: Sequence[int]) -> bool:
    """``tensor_allows_quantization``: 2-D and up, a weight, not a norm, not AltUp's or LAuReL's
    small matrices, not the per-layer model projection."""
    if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not any(part in name for part in ("altup", "laurel", "per_layer_model_proj"))


def _mixed(mix: Mix, category: str | None, cols: int, seen: dict[str, int], n_attn_v: int, n_layer: int,
           imatrix: bool) -> str:
    """``llama_tensor_get_type_impl`` for Gemma 3n's categories."""
    if category == "token_embd":
        if cols % GGML_BLOCKS[mix.base][0]:
            return "q8_0"
        return mix.base if mix.base == "q8_0" else "q6_K"
    if category in mix.more_bits:
        i, n = (seen["attn_v"], n_attn_v) if category == "attn_v" else (seen["ffn_down"], n_layer)
        if use_more_bits(i, n):
            return "q6_K"
    if category == "ffn_down" and mix.first_down and imatrix and seen["ffn_down"] < n_layer // 8:
        return mix.first_down
    return mix.base


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth, and every
    third layer between them."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ggml: str, cols: int) -> str:
    """``tensor_type_fallback``: a type whose blocks fit the row."""
    if cols % GGML_BLOCKS[ggml][0] == 0:
        return ggml
    ggml = FALLBACK.get(ggml, ggml)
    return ggml if cols % GGML_BLOCKS[ggml][0] == 0 else "f16"


def _category(name: str) -> str | None:
    """``tensor_get_category``, for the categories Gemma 3n's rules read."""
    if name in TOKEN_EMBEDDINGS:
        return "token_embd"
    if "attn_v.weight" in name:
        return "attn_v"
    if "ffn_down" in name:
        return "ffn_down"
    return None


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1
