"""gslice's GGML block quantizers equal llama.cpp's own (`ggml_quantize_chunk` in the
libggml-base of llama-cpp-python 0.3.36) byte for byte: every type gslice writes, with and
without an importance matrix, on random and adversarial rows (tests/ggml_cases.py) at widths
256..16384, from f32 rows and from the same values as bf16."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gslice import _core
from gslice.testing import f32_to_bf16_bits

from ggml_cases import CASES, imatrix, rows  # tests/, on the path as this package's root

from .llama_ggml import IMATRIX_TYPES, KNOWN_ANSWERS, TYPE_IDS, known_answers, quantize

K_WIDTHS = [256, 512, 2048, 4096, 16384]
WIDTHS = {name: [1, 7, *K_WIDTHS] for name in ("f32", "f16", "bf16")}
WIDTHS |= {name: [32, 96, *K_WIDTHS] for name in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")}
WIDTHS |= {name: K_WIDTHS for name in ("q4_K", "q5_K", "q6_K")}
BLOCK_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q4_K": 144,
               "q5_K": 176, "q6_K": 210}
ROWS = 4
IMATRIX = [None, "spread", "with_zeros"]


def differences(a: bytes, b: bytes, block: int) -> str:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    if x.shape != y.shape:
        return f"lengths {x.size} and {y.size}"
    i = np.flatnonzero(x != y)
    return f"{i.size} bytes differ in {np.unique(i // block).size} blocks, first at byte {i[:4].tolist()}: gslice {x[i[:4]].tolist()}, llama.cpp {y[i[:4]].tolist()}"


@pytest.mark.parametrize("weights", IMATRIX, ids=lambda w: f"imatrix-{w}")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", list(TYPE_IDS))
def test_blocks_equal_llama_cpp(name, case, weights):
    for width in WIDTHS[name]:
        x = rows(case, ROWS, width)
        qw = imatrix(weights, width) if weights else None
        expected = quantize(name, x, qw)
        qw_bytes = None if qw is None else qw.tobytes()
        ours = _core.ggml_quantize(name, x.tobytes(), "F32", width, qw_bytes, 2)
        assert ours == expected, f"{name} {case} width {width} imatrix {weights}: {differences(ours, expected, BLOCK_BYTES[name])}"
        from_bf16 = _core.ggml_quantize(name, f32_to_bf16_bits(x).tobytes(), "BF16", width, qw_bytes, 2)
        assert from_bf16 == expected, f"{name} {case} width {width} imatrix {weights}, from bf16"


@pytest.mark.parametrize("name", IMATRIX_TYPES)
def test_the_importance_matrix_changes_the_blocks(name):
    # Control: the imatrix variants are really exercised (llama.cpp's and gslice's both change).
    x = rows("normal", ROWS, 2048)
    qw = imatrix("spread", 2048)
    plain, weighted = quantize(name, x), quantize(name, x, qw)
    assert plain != weighted
    assert _core.ggml_quantize(name, x.tobytes(), "F32", 2048, qw.tobytes()) == weighted


def test_negative_zero_block_is_llama_cpps():
    # gguf's numpy reference gives +0.0 here (tests/test_ggml_blocks.py); llama.cpp -0.0.
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    assert quantize("q4_0", x)[:2] == bytes([0x00, 0x80])
    assert _core.ggml_quantize("q4_0", x.tobytes(), "F32", 32) == quantize("q4_0", x)


def test_the_engine_tiers_known_answers_are_llama_cpps():
    # rust/engine/tests/ggml_known_answers.rs checks gslice against these hashes without
    # llama.cpp; here they are recomputed with llama.cpp (regenerate: python -m tests.interop.llama_ggml).
    assert json.loads(KNOWN_ANSWERS.read_text()) == known_answers()
