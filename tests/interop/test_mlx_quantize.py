"""The engine's ``mlx_affine`` quantizer against mlx's own ``mx.quantize`` (CPU), bit for bit:
every packed word, scale and bias of BF16 weights sliced by every operation, and F16 / F32
sources too. Also shows gslice.testing's numpy reference equal to ``mx.quantize``, which is
what lets the core tier (tests/test_affine_quantize.py) test the kernel without mlx."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gslice import engine
from gslice.engine import AffineQuantization, OutputPlan, TensorPlan
from gslice.testing import (
    affine_edge_weights,
    as_float32,
    f32_to_bf16_bits,
    random_bf16,
    read_checkpoint,
    reference_affine_quantize,
    write_safetensors,
)

# The rule is the CPU kernel's (Metal may round ties differently); mlx[cpu] has no other device.
assert mx.default_device() == mx.cpu

MLX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def to_mlx(dtype: str, a: np.ndarray) -> mx.array:
    """A safetensors array (BF16 as uint16 bits) as an mlx array of the same dtype and bits."""
    if dtype == "BF16":
        return mx.array(a).view(mx.bfloat16)
    return mx.array(a)


def bits16(a: mx.array) -> np.ndarray:
    """The bit patterns of a 16-bit mlx array."""
    return np.array(a.view(mx.uint16))


def mlx_quantize(x: mx.array, bits: int, group: int) -> tuple[np.ndarray, mx.array, mx.array]:
    w, s, b = mx.quantize(x, group_size=group, bits=bits)
    return np.array(w), s, b


def sources() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    edge = affine_edge_weights(rows_of_noise=4)
    return {
        "edge_bf16": ("BF16", f32_to_bf16_bits(edge)),
        "edge_f16": ("F16", edge.astype(np.float16)),
        "edge_f32": ("F32", edge),
        # A weight at a realistic scale, wide enough for several groups of every size.
        "noise_bf16": ("BF16", random_bf16(rng, (96, 1024), scale=0.03)),
        "noise_f32": ("F32", (rng.standard_normal((40, 512)) * 0.03).astype(np.float32)),
    }


def slice_np(a: np.ndarray, op: dict) -> np.ndarray:
    if op["kind"] == "copy":
        return a
    axis = 0 if op["kind"] == "rows" else 1
    return np.concatenate([a.take(np.arange(b, e), axis=axis) for b, e in op["ranges"]], axis=axis)


OPS = {
    "copy": engine.copy(),
    "rows": engine.keep_row_blocks(2, [5, 0, 3]),
    "cols": engine.keep_col_blocks(32, [3, 0, 7, 2]),  # groups of 64 and 128 straddle blocks
    "lead": engine.keep_cols(128),
}
CASES = [
    (src, op, bits, group)
    for src in sources()
    for op in OPS
    for bits in (4, 8)
    for group in (32, 64, 128)
    if op == "copy" or (bits, group) in {(4, 64), (8, 128)}
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlx-affine")
    arrays = sources()
    src = write_safetensors(tmp / "src.safetensors", arrays)
    tensors = []
    for case in CASES:
        name = "_".join(map(str, case))
        q = AffineQuantization(case[2], case[3], f"{name}.scales", f"{name}.biases", f"{name}.weight")
        tensors.append(TensorPlan(f"{name}.weight", case[0], OPS[case[1]], q))
    out = tmp / "out"
    engine.execute(src, [OutputPlan(out, tensors)], band_bytes=4096)
    return arrays, read_checkpoint(out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_engine_output_is_mx_quantize_bit_for_bit(written, case):
    arrays, got = written
    src, op, bits, group = case
    name = "_".join(map(str, case))
    dtype, a = arrays[src]
    x = slice_np(a, OPS[op])
    words, scales, biases = mlx_quantize(to_mlx(dtype, x), bits, group)
    assert np.array_equal(got[f"{name}.weight"], words)
    if dtype == "BF16":
        # mlx keeps the input's dtype: its scales and biases are the very BF16 bytes.
        assert np.array_equal(got[f"{name}.scales"], bits16(scales))
        assert np.array_equal(got[f"{name}.biases"], bits16(biases))
    else:
        # mlx computes in float32 whatever the input: the float32 call gives the same words,
        # and its scales and biases rounded to BF16 are what gslice stores.
        w32, s32, b32 = mlx_quantize(mx.array(as_float32(x)), bits, group)
        assert np.array_equal(w32, words)
        assert np.array_equal(got[f"{name}.scales"], bits16(s32.astype(mx.bfloat16)))
        assert np.array_equal(got[f"{name}.biases"], bits16(b32.astype(mx.bfloat16)))
        if dtype == "F16":
            assert np.array_equal(np.array(scales), np.array(s32.astype(mx.float16)))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("src", list(sources()))
def test_numpy_reference_is_mx_quantize(src, bits, group):
    dtype, a = sources()[src]
    x = as_float32(a)
    ref = reference_affine_quantize(x, bits, group)
    words, scales, biases = mlx_quantize(mx.array(x), bits, group)
    assert np.array_equal(ref.words, words)
    assert np.array_equal(ref.scales_f32.view(np.uint32), np.array(scales).view(np.uint32))
    assert np.array_equal(ref.biases_f32.view(np.uint32), np.array(biases).view(np.uint32))
    w16, s16, b16 = mlx_quantize(mx.array(f32_to_bf16_bits(x)).view(mx.bfloat16), bits, group)
    ref16 = reference_affine_quantize(f32_to_bf16_bits(x), bits, group)
    assert np.array_equal(ref16.words, w16)
    assert np.array_equal(ref16.scales, bits16(s16)) and np.array_equal(ref16.biases, bits16(b16))


def test_the_tie_rows_tell_rounding_modes_apart():
    """A control: rounding half away from zero (not mlx's rule) gives other words on the row
    of ``(w - bias) / s`` ties and another scale on the row of the ``edge / s`` tie, so the
    bit-for-bit comparisons above do exercise both roundings."""
    x = as_float32(f32_to_bf16_bits(affine_edge_weights(rows_of_noise=0)))
    words, scales, _ = mlx_quantize(mx.array(x), 4, 32)
    ref = reference_affine_quantize(x, 4, 32)
    groups = x.reshape(x.shape[0], -1, 32)
    s, b = ref.scales_f32[..., None], ref.biases_f32[..., None]
    away = np.clip(np.floor(np.abs((groups - b) / s) + 0.5), 0, 15).astype(np.uint32)
    packed = np.zeros_like(words)
    for k in range(8):
        packed |= away[:, :, k::8].reshape(words.shape) << np.uint32(4 * k)
    assert sorted(set(np.nonzero(packed != words)[0].tolist())) == [4]
    # Row 6: edge 14.5, step -1: q0 = rint(-14.5) = -14, where rounding away would give -15.
    assert (np.array(scales)[6] == np.float32(14.5) / np.float32(-14)).all()
