"""GGML's 32-element blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) from gslice's engine equal the `gguf`
package's numpy reference quantizer (gguf.quants, written to match llama.cpp's
quantize_row_<type>_ref) bit for bit. The K-quants and the importance-matrix variants are checked against llama.cpp itself in
the interop tier (tests/interop/test_ggml_llama_cpp.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from gslice import _core
from gslice.testing import f32_to_bf16_bits

from ggml_cases import CASES, rows

TYPES = {name: GGMLQuantizationType[name.upper()] for name in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")}
WIDTHS = [32, 256, 4096, 16384]


def differences(a: bytes, b: bytes) -> str:
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    if x.shape != y.shape:
        return f"lengths {x.size} and {y.size}"
    i = np.flatnonzero(x != y)
    return f"{i.size} bytes differ, first at {i[:5].tolist()}: {x[i[:5]].tolist()} vs {y[i[:5]].tolist()}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf's numpy overflows on purpose
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", TYPES)
def test_blocks_equal_the_gguf_reference(name, case):
    for width in WIDTHS:
        # +0.0 for -0.0: see test_q4_0_zero_block_whose_first_value_is_negative_zero
        x = rows(case, 8, width) + np.float32(0.0)
        expected = gguf_quantize(x, TYPES[name]).tobytes()
        from_f32 = _core.ggml_quantize(name, x.tobytes(), "F32", width, None, 2)
        from_bf16 = _core.ggml_quantize(name, f32_to_bf16_bits(x).tobytes(), "BF16", width, None, 2)
        assert from_f32 == expected, f"{name} {case} width {width}: {differences(from_f32, expected)}"
        assert from_bf16 == expected, f"{name} {case} width {width} from bf16: {differences(from_bf16, expected)}"


def test_the_reference_is_not_trivially_matched():
    # Controls: a changed value or a different type changes the bytes.
    x = rows("normal", 4, 256)
    base = _core.ggml_quantize("q4_0", x.tobytes(), "F32", 256)
    y = x.copy()
    y[1, 17] *= 1.5
    assert _core.ggml_quantize("q4_0", y.tobytes(), "F32", 256) != base
    assert gguf_quantize(x, GGMLQuantizationType.Q8_0).tobytes() != base


def test_known_q8_0_block():
    # amax 127 -> d = 1.0 (f16 0x3C00); halves round away from zero.
    x = np.zeros(32, np.float32)
    x[:6] = [127.0, -127.0, 2.5, -2.5, 0.49, 126.5]
    out = _core.ggml_quantize("q8_0", x.tobytes(), "F32", 32)
    assert out[:2] == bytes([0x00, 0x3C])
    assert np.frombuffer(out[2:8], np.int8).tolist() == [127, -127, 3, -3, 0, 127]


def test_known_q4_0_block():
    # max (signed) -8 -> d = 1.0; level = trunc(x / d + 8.5), capped at 15; element j in the
    # low nibble of byte j, element j + 16 in its high nibble.
    x = np.zeros(32, np.float32)
    x[0], x[16], x[1], x[17] = -8.0, 7.0, 0.49, -0.5
    out = _core.ggml_quantize("q4_0", x.tobytes(), "F32", 32)
    assert out[:2] == bytes([0x00, 0x3C])  # d = -8 / -8 = 1.0
    assert out[2:5] == bytes([0x00 | 15 << 4, 8 | 8 << 4, 0x88])


def test_q4_0_zero_block_whose_first_value_is_negative_zero():
    # The one place where gguf's reference and llama.cpp differ: llama.cpp takes `max` = +0.0
    # for a block of zeros whatever their signs (no |v| beats its initial 0), so d = 0 / -8 =
    # -0.0 (f16 0x8000); gguf takes the block's first value, and -0.0 / -8 = +0.0. gslice
    # follows llama.cpp (proven against it in the interop tier).
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    assert gguf_quantize(x, GGMLQuantizationType.Q4_0).tobytes()[:2] == bytes([0x00, 0x00])
    ours = _core.ggml_quantize("q4_0", x.tobytes(), "F32", 32)
    assert ours[:2] == bytes([0x00, 0x80])
    assert ours == _core.ggml_quantize("q4_0", np.zeros(32, np.float32).tobytes(), "F32", 32)
