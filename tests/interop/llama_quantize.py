"""llama.cpp's own quantizer, ``llama_model_quantize`` of llama-cpp-python 0.3.36, called as
``llama-quantize`` calls it: the reference for gslice's quantized GGUF files
(tests/interop/test_gguf_kquants.py) and the second step of the path users have today
(benches/full.py: a bf16 GGUF, then llama.cpp's quantizer).

With an importance matrix, ``llama-quantize --imatrix FILE`` loads the file (``load_imatrix``)
and passes its entries to the quantizer, and records four keys through its kv overrides; here
the caller gives the loaded entries and those keys' values."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Mapping

import numpy as np

import llama_cpp as L

# gslice's file type -> (llama_ftype, --pure): llama-quantize's Q4_K_M, Q5_K_M, Q6_K, Q4_0, and
# "--pure Q4_K" / "--pure Q5_K" (its Q4_K and Q5_K are aliases of Q4_K_M and Q5_K_M).
FTYPES = {
    "q4_k_m": (L.LLAMA_FTYPE_MOSTLY_Q4_K_M, False),
    "q5_k_m": (L.LLAMA_FTYPE_MOSTLY_Q5_K_M, False),
    "q6_k": (L.LLAMA_FTYPE_MOSTLY_Q6_K, False),
    "q4_k": (L.LLAMA_FTYPE_MOSTLY_Q4_K_M, True),
    "q5_k": (L.LLAMA_FTYPE_MOSTLY_Q5_K_M, True),
    "q4_0": (L.LLAMA_FTYPE_MOSTLY_Q4_0, False),
}


@L.llama_log_callback
def _quiet(level, text, user_data):  # noqa: ARG001
    pass


def quantize(src: Path, out: Path, file_type: str, threads: int = 2, imatrix: Mapping[str, np.ndarray] | None = None,
             keys: Mapping[str, str | int] | None = None) -> None:
    """``llama-quantize [--pure] [--imatrix] src out TYPE threads``: ``imatrix`` the entries
    as load_imatrix hands them over, ``keys`` the quantize.imatrix.* values it records."""
    ftype, pure = FTYPES[file_type]
    L.llama_log_set(_quiet, None)
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = pure
    params.nthread = threads
    keep = []  # the arrays the C structs point into
    if imatrix is not None:
        entries = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
        for e, (name, values) in zip(entries, sorted(imatrix.items())):
            v = np.ascontiguousarray(values, np.float32)
            keep.append(v)
            e.name, e.data, e.size = name.encode(), v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data))
        keep.append(entries)
    if keys:
        overrides = (L.llama_model_kv_override * (len(keys) + 1))()
        for o, (key, value) in zip(overrides, keys.items()):
            o.key = key.encode()
            if isinstance(value, str):
                o.tag, o.value.val_str = L.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
            else:
                o.tag, o.value.val_i64 = L.LLAMA_KV_OVERRIDE_TYPE_INT, value
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(L.llama_model_kv_override))
        keep.append(overrides)
    rc = L.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {file_type}) returned {rc}")
