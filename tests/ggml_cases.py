"""Rows for the GGML block quantizer tests: random weights and the inputs where block quantizers
take their rare branches (all-zero blocks and sub-blocks, constant and one-signed blocks, exact
ties, magnitudes near the f32 and f16 limits, subnormals). Every value is a bf16 value, as real
weights are, and none is NaN or infinite."""

from __future__ import annotations

import numpy as np

from gslice.testing import bf16_bits_to_f32, f32_to_bf16_bits

CASES = [
    "normal",
    "row_scales",
    "outliers",
    "zeros",
    "constant",
    "one_signed",
    "ties",
    "zero_sub_blocks",
    "sparse",
    "huge",
    "tiny",
    "subnormal",
]


def bf16_round(x: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def rows(case: str, n: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``width`` float32 values (bf16-exact) for ``case``."""
    rng = np.random.default_rng([seed, CASES.index(case), width])
    normal = rng.standard_normal((n, width)).astype(np.float32)
    if case == "normal":
        x = normal * 0.02
    elif case == "row_scales":  # 1e-6 .. 1e6 from row to row
        x = normal * np.float32(10.0) ** rng.uniform(-6, 6, (n, 1)).astype(np.float32)
    elif case == "outliers":  # a few values 100x the rest
        x = normal * 0.02
        hit = rng.random((n, width)) < 0.01
        x[hit] *= 100
    elif case == "zeros":
        x = np.zeros((n, width), np.float32)
    elif case == "constant":  # each row one value, some rows negative
        x = np.repeat(rng.choice([1.0, -0.25, 3e-3, -7.0], (n, 1)).astype(np.float32), width, axis=1)
    elif case == "one_signed":  # all positive or all negative rows
        x = np.abs(normal) * 0.05 * rng.choice([1.0, -1.0], (n, 1)).astype(np.float32)
    elif case == "ties":  # multiples of 1/2 and 1/4: exact halves after scaling
        x = rng.integers(-64, 65, (n, width)).astype(np.float32) / rng.choice([1.0, 2.0, 4.0], (n, 1)).astype(np.float32)
    elif case == "zero_sub_blocks":  # whole 16- and 32-element runs of zeros among normal values
        x = normal * 0.02
        for size in (16, 32):
            runs = rng.random((n, -(-width // size))) < 0.3
            x *= ~np.repeat(runs, size, axis=1)[:, :width]
    elif case == "sparse":
        x = normal * 0.02 * (rng.random((n, width)) < 0.1)
    elif case == "huge":  # up to bf16's largest finite value, 3.39e38: squares overflow
        x = normal * np.float32(10.0) ** rng.uniform(20, 38, (n, 1)).astype(np.float32)
        x = np.clip(x, -3.38e38, 3.38e38)
    elif case == "tiny":  # normal f32 but far below the f16 range
        x = normal * np.float32(10.0) ** rng.uniform(-37, -20, (n, 1)).astype(np.float32)
    elif case == "subnormal":  # f32 subnormals (bf16 keeps 7 of their bits)
        x = normal * np.float32(1e-39)
    else:
        raise ValueError(case)
    return bf16_round(x.astype(np.float32))


def imatrix(kind: str, width: int, seed: int = 0) -> np.ndarray:
    """Per-column importance weights as llama.cpp's imatrix tool makes them (mean squared
    activations: positive, widely spread), or with zero columns."""
    rng = np.random.default_rng([seed, width, len(kind)])
    w = np.exp(rng.normal(0, 2, width)).astype(np.float32)
    if kind == "with_zeros":
        w[rng.random(width) < 0.2] = 0
    elif kind != "spread":
        raise ValueError(kind)
    return w
