"""GGML block quantizer throughput, gslice's engine against llama.cpp's own, in GB of BF16 input
per second on 2 threads.

    python -m pytest benches/test_ggml_quant.py --benchmark-enable -s

Needs llama-cpp-python 0.3.36 (the interop extra; the wheel from .ci/llama-cpp-wheel). Each
case quantizes one [4096, 4096] BF16 tensor (32 MiB) held in memory, no file I/O:
- gslice: `gslice._core.ggml_quantize`, which converts each row to f32 and quantizes it on 2
  threads, as the engine does when it writes a tensor;
- llama.cpp: what its quantizer does with a BF16 tensor, on 2 threads of half the rows each:
  `ggml_bf16_to_fp32_row`, then `ggml_quantize_chunk` (from the wheel's libggml-base, built
  -O3 for baseline x86-64, as PyPI's sdist builds it).
Both outputs are compared byte for byte after timing. Types with an importance matrix run
once without and once with one (random, as llama.cpp's imatrix tool writes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIGURES

from gslice import _core
from gslice.testing import random_bf16

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.interop.llama_ggml import quantize_bf16_threads, row_size  # noqa: E402

pytest.importorskip("llama_cpp", reason="compares with llama.cpp: needs llama-cpp-python (the interop extra)")

ROWS, COLS = 4096, 4096
THREADS = 2
CASES = [("q8_0", False), ("q4_0", False), ("q4_0", True), ("q4_K", False), ("q4_K", True),
         ("q5_K", False), ("q5_K", True), ("q6_K", False), ("q6_K", True)]
_SPEED: dict[tuple[str, bool], dict[str, float]] = {}


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    bf16 = random_bf16(rng, (ROWS, COLS), scale=0.02)
    imatrix = np.exp(rng.normal(0, 2, COLS)).astype(np.float32)
    return bf16, bf16.tobytes(), imatrix


@pytest.mark.parametrize("who", ["gslice", "llama.cpp"])
@pytest.mark.parametrize("name,with_imatrix", CASES, ids=[f"{n}{'-imatrix' if i else ''}" for n, i in CASES])
def test_ggml_quantize_throughput(benchmark, weights, name, with_imatrix, who):
    bf16, raw, imatrix = weights
    qw = imatrix if with_imatrix else None
    if who == "gslice":
        qw_bytes = None if qw is None else qw.tobytes()
        result = benchmark.pedantic(lambda: _core.ggml_quantize(name, raw, "BF16", COLS, qw_bytes, THREADS), rounds=3, iterations=1)
    else:
        f32 = np.empty((ROWS, COLS), np.float32)
        out = np.empty(ROWS * row_size(name, COLS), np.uint8)
        benchmark.pedantic(lambda: quantize_bf16_threads(name, bf16, f32, out, qw, THREADS), rounds=3, iterations=1)
        result = out.tobytes()
    speeds = _SPEED.setdefault((name, with_imatrix), {})
    speeds[f"{who} bytes"] = result
    stats = getattr(benchmark, "stats", None)
    if stats:
        speeds[who] = bf16.nbytes / 1e9 / stats.stats.median
    if "gslice bytes" in speeds and "llama.cpp bytes" in speeds:
        assert speeds["gslice bytes"] == speeds["llama.cpp bytes"], f"{name}: gslice's blocks differ from llama.cpp's"
        if "gslice" in speeds and "llama.cpp" in speeds:
            line = (f"ggml {name}{' imatrix' if with_imatrix else ''}: gslice {speeds['gslice']:.3f} GB/s, "
                    f"llama.cpp {speeds['llama.cpp']:.3f} GB/s of bf16, {THREADS} threads "
                    f"(x{speeds['gslice'] / speeds['llama.cpp']:.2f}), bytes equal")
            FIGURES.append(line)
            print("\n" + line)
