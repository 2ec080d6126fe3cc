"""llama.cpp's own quantizer, `ggml_quantize_chunk` from the libggml-base that the
llama-cpp-python wheel ships, called through ctypes: the reference for gslice's GGML block
types (tests/interop/test_ggml_llama_cpp.py) and the speed it is compared with
(benches/test_ggml_quant.py)."""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

# enum ggml_type
TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "q4_K": 12, "q5_K": 13, "q6_K": 14, "bf16": 30}


@cache
def libggml() -> ctypes.CDLL:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llama-cpp-python is not installed")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libggml-base.so"
    ggml = ctypes.CDLL(str(lib))
    f32p = ctypes.POINTER(ctypes.c_float)
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, f32p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, f32p]
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    ggml.ggml_row_size.restype = ctypes.c_size_t
    ggml.ggml_bf16_to_fp32_row.argtypes = [ctypes.c_void_p, f32p, ctypes.c_int64]
    ggml.ggml_bf16_to_fp32_row.restype = None
    return ggml


def _f32p(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def row_size(name: str, width: int) -> int:
    return libggml().ggml_row_size(TYPE_IDS[name], width)


def quantize(name: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> bytes:
    """`ggml_quantize_chunk(type, rows, ...)` over all of `rows` (float32, [n, width])."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, width = rows.shape
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
    out = np.empty(n * row_size(name, width), np.uint8)
    written = libggml().ggml_quantize_chunk(TYPE_IDS[name], _f32p(rows), out.ctypes.data, 0, n, width, _f32p(imatrix))
    assert written == out.size
    return out.tobytes()


def quantize_bf16_into(name: str, bf16: np.ndarray, f32: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None = None) -> None:
    """What llama.cpp's quantizer does with a BF16 tensor, for the benchmark: convert the rows
    to f32 (`ggml_bf16_to_fp32_row`) into `f32`, then `ggml_quantize_chunk` into `out`. ctypes
    releases the GIL, so threads calling this on disjoint rows run in parallel."""
    n, width = bf16.shape
    ggml = libggml()
    ggml.ggml_bf16_to_fp32_row(bf16.ctypes.data, _f32p(f32), bf16.size)
    ggml.ggml_quantize_chunk(TYPE_IDS[name], _f32p(f32), out.ctypes.data, 0, n, width, _f32p(imatrix))
