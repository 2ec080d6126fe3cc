"""The K-quant kernels' throughput for benches/full.py, in GB of BF16 input per second: gslice's
engine (``gslice._core.ggml_quantize``: rows converted to f32 and quantized, as the engine does
when it writes a tensor) against llama.cpp's quantizer kernel (``ggml_bf16_to_fp32_row`` then
``ggml_quantize_chunk`` from llama-cpp-python's libggml-base), each on the same threads, over
one BF16 tensor in memory (no file I/O). Both outputs are compared byte for byte. Prints JSON.

    python benches/kquant_speed.py --threads 2 [--rows 8192 --cols 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from gslice import _core
from gslice.testing import random_bf16

# The block types of a Q4_K_M file of E4B's shapes (Q8_0 aside: the converter's type).
TYPES = ("q4_K", "q6_K", "q5_0")


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bf16 = random_bf16(np.random.default_rng(0), (args.rows, args.cols), scale=0.02)
    raw = bf16.tobytes()
    out: dict = {"rows": args.rows, "cols": args.cols, "threads": args.threads, "bf16_bytes": bf16.nbytes, "types": {}}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.interop.llama_ggml import quantize_bf16_threads, row_size
    except ImportError as e:
        quantize_bf16_threads = None
        out["llama_cpp"] = f"not measured: {e}"
    for name in TYPES:
        ours = _core.ggml_quantize(name, raw, "BF16", args.cols, None, args.threads)
        t = best_of(args.rounds, lambda: _core.ggml_quantize(name, raw, "BF16", args.cols, None, args.threads))
        figures = {"gslice_gb_s": bf16.nbytes / 1e9 / t}
        if quantize_bf16_threads is not None:
            f32 = np.empty((args.rows, args.cols), np.float32)
            theirs = np.empty(args.rows * row_size(name, args.cols), np.uint8)
            t = best_of(args.rounds, lambda: quantize_bf16_threads(name, bf16, f32, theirs, None, args.threads))
            figures.update(llama_cpp_gb_s=bf16.nbytes / 1e9 / t, bytes_equal=theirs.tobytes() == ours)
        out["types"][name] = figures
    print(json.dumps(out))


if __name__ == "__main__":
    main()
