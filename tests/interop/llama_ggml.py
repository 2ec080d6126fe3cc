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
TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q4_K": 12, "q5_K": 13, "q6_K": 14, "bf16": 30}
# the types whose quantizer reads an importance matrix
IMATRIX_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K")


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


def quantize_bf16_threads(name: str, bf16: np.ndarray, f32: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None = None,
                          threads: int = 2) -> None:
    """:func:`quantize_bf16_into` on ``threads`` threads, each on its share of the rows, into
    ``out`` (``f32`` and ``out`` preallocated, so that timing measures the work alone)."""
    import threading

    rows, width = bf16.shape
    per = -(-rows // threads)
    rb = row_size(name, width)
    workers = [
        threading.Thread(target=quantize_bf16_into, args=(name, bf16[t * per:(t + 1) * per], f32[t * per:(t + 1) * per],
                                                          out[t * per * rb:(t + 1) * per * rb], imatrix))
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def quantize_bf16_into(name: str, bf16: np.ndarray, f32: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None = None) -> None:
    """What llama.cpp's quantizer does with a BF16 tensor, for the benchmark: convert the rows
    to f32 (`ggml_bf16_to_fp32_row`) into `f32`, then `ggml_quantize_chunk` into `out`. ctypes
    releases the GIL, so threads calling this on disjoint rows run in parallel."""
    n, width = bf16.shape
    ggml = libggml()
    ggml.ggml_bf16_to_fp32_row(bf16.ctypes.data, _f32p(f32), bf16.size)
    ggml.ggml_quantize_chunk(TYPE_IDS[name], _f32p(f32), out.ctypes.data, 0, n, width, _f32p(imatrix))


# -- the known answers of the engine tier (rust/engine/tests/data/ggml_llama_cpp.json) --------

KNOWN_ANSWERS = Path(__file__).resolve().parents[2] / "rust/engine/tests/data/ggml_llama_cpp.json"
_MASK64 = (1 << 64) - 1


class _Rng:
    """xorshift64, as `Rng` in rust/engine/tests/ggml_known_answers.rs."""

    def __init__(self, seed: int):
        self.s = seed

    def next(self) -> int:
        s = self.s
        s ^= (s << 13) & _MASK64
        s ^= s >> 7
        s ^= (s << 17) & _MASK64
        self.s = s
        return s

    def bf16(self, lo: int, span: int, signed: bool) -> float:
        r = self.next()
        sign = r >> 63 if signed else 0
        bits = (sign << 15) | ((lo + (r >> 32) % span) << 7) | ((r >> 16) & 0x7F)
        return np.array([bits << 16], np.uint32).view(np.float32)[0]


def known_answer_rows(rows: int, width: int, seed: int) -> np.ndarray:
    rng = _Rng(seed)
    out = np.zeros((rows, width), np.float32)
    for r in range(rows):
        for i in range(width):
            kind = r % 8
            if kind == 0:
                v = rng.bf16(97, 40, True)
            elif kind == 1:
                v = rng.bf16(126, 2, True)
            elif kind == 2:
                v = rng.bf16(100, 20, True)
                v = 0.0 if (i // 32) % 3 == 1 else v
            elif kind == 3:
                v = rng.bf16(110, 20, False)
            elif kind == 4:
                v = rng.bf16(247, 8, True)
            elif kind == 5:
                v = rng.bf16(0, 1, True)
            elif kind == 6:
                v = 0.375
            else:
                v = rng.bf16(120, 10, True)
                v = v if i % 256 == 17 else 0.0
            out[r, i] = v
    return out


def known_answer_imatrix(width: int, seed: int) -> np.ndarray:
    rng = _Rng(seed ^ 0x9E3779B97F4A7C15)
    return np.array([0.0 if i % 5 == 3 else rng.bf16(119, 16, False) for i in range(width)], np.float32)


def known_answers(width: int = 1024, rows: int = 8, seed: int = 0x2545F4914F6CDD1D) -> dict:
    """llama.cpp's hashes for the known-answer rows: what the JSON file must hold."""
    import hashlib

    x = known_answer_rows(rows, width, seed)
    qw = known_answer_imatrix(width, seed)
    hashes = {}
    for name in TYPE_IDS:
        hashes[name] = hashlib.sha256(quantize(name, x)).hexdigest()
        if name in IMATRIX_TYPES:
            hashes[f"{name}+imatrix"] = hashlib.sha256(quantize(name, x, qw)).hexdigest()
    return {"width": width, "rows": rows, "seed": seed, "sha256": dict(sorted(hashes.items()))}


if __name__ == "__main__":  # python -m tests.interop.llama_ggml: rewrites the known answers
    import json

    KNOWN_ANSWERS.parent.mkdir(parents=True, exist_ok=True)
    KNOWN_ANSWERS.write_text(json.dumps(known_answers(), indent=1) + "\n")
    print(f"wrote {KNOWN_ANSWERS}")
