"""The engine's affine (``mlx_affine``) quantizer against gslice.testing's numpy reference of
``mx.quantize``, bit for bit, fused with every slicing operation, for BF16, F16 and F32 sources.
The interop tier (tests/interop/test_mlx_quantize.py) shows the reference equal to mlx's own
``mx.quantize``, so this tier tests the kernel without mlx."""

from __future__ import annotations

import numpy as np
import pytest

from gslice import engine
from gslice.engine import AffineQuantization, OutputPlan, Quantization, TensorPlan
from gslice.errors import SourceError
from gslice.testing import (
    affine_edge_weights,
    as_float32,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    read_checkpoint,
    reference_affine_quantize,
    write_safetensors,
)

W = affine_edge_weights()
SOURCES = {
    "bf16": ("BF16", f32_to_bf16_bits(W)),
    "f16": ("F16", W.astype(np.float16)),
    "f32": ("F32", W),
}
COL_BLOCKS = [1, 3, 0, 7, 6, 4]  # of 32 columns: groups of 64 and 128 straddle blocks
ROW_BLOCKS = [3, 0, 2]  # of 4 rows (of 17)


def sliced(source: str, op: str) -> np.ndarray:
    x = as_float32(SOURCES[source][1])
    if op == "rows":
        return x[np.concatenate([np.arange(b * 4, b * 4 + 4) for b in ROW_BLOCKS])]
    if op == "cols":
        return np.hstack([x[:, b * 32 : (b + 1) * 32] for b in COL_BLOCKS])
    return x


OPS = {
    "copy": engine.copy(),
    "rows": engine.keep_row_blocks(4, ROW_BLOCKS),
    "cols": engine.keep_col_blocks(32, COL_BLOCKS),
}


def affine(name: str, source: str, op: str, bits: int, group: int) -> TensorPlan:
    q = AffineQuantization(bits, group, f"{name}.scales", f"{name}.biases", f"{name}.weight")
    return TensorPlan(f"{name}.weight", source, OPS[op], q)


CASES = [
    (src, op, bits, group)
    for src in SOURCES
    for op in OPS
    for bits in (4, 8)
    for group in (32, 64, 128)
    if op == "copy" or (bits, group) in {(4, 64), (8, 32)}
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every case in one run, in bands of 3 rows so that band boundaries are crossed."""
    tmp = tmp_path_factory.mktemp("affine")
    src = write_safetensors(tmp / "src.safetensors", SOURCES)
    out = tmp / "out"
    tensors = [affine("_".join(map(str, c)), *c) for c in CASES]
    report = engine.execute(src, [OutputPlan(out, tensors)], band_bytes=3 * 256 * 2, max_shard_size=40_000)
    return src, out, tensors, report


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_every_word_scale_and_bias_equals_the_reference(written, case):
    _, out, _, report = written
    src, op, bits, group = case
    name = "_".join(map(str, case))
    got = read_checkpoint(out)
    x = sliced(src, op)
    ref = reference_affine_quantize(x, bits, group)
    words, scales, biases = got[f"{name}.weight"], got[f"{name}.scales"], got[f"{name}.biases"]
    assert words.dtype == np.uint32 and words.shape == (x.shape[0], x.shape[1] * bits // 32)
    assert scales.dtype == np.uint16 and biases.dtype == np.uint16  # BF16 bits
    assert scales.shape == biases.shape == (x.shape[0], x.shape[1] // group)
    assert np.array_equal(words, ref.words)
    assert np.array_equal(scales, ref.scales)
    assert np.array_equal(biases, ref.biases)
    rep = next(r for r in report.quantized if r.name == f"{name}.weight")
    assert (rep.scheme, rep.parts, rep.bits, rep.group_size) == ("mlx_affine", (f"{name}.scales", f"{name}.biases"), bits, group)
    assert rep.shape == x.shape and rep.source_dtype == SOURCES[src][0]
    assert rep.bytes_after == words.nbytes + scales.nbytes + biases.nbytes
    assert rep.max_abs_error == ref.max_abs_error
    assert rep.rms_error == pytest.approx(ref.rms_error, rel=1e-12)
    assert rep.weight_rms == pytest.approx(ref.weight_rms, rel=1e-12)


def test_the_reference_reaches_every_branch_of_the_rule():
    """The crafted rows do what affine_edge_weights says (so the comparison above covers them)."""
    x = as_float32(SOURCES["bf16"][1])
    r4, r8 = reference_affine_quantize(x, 4, 32), reference_affine_quantize(x, 8, 32)
    s4, b4 = bf16_bits_to_f32(r4.scales), bf16_bits_to_f32(r4.biases)
    assert (r4.biases[0] == 0).all() and (r4.q[0] == 0).all() and (r4.scales[0] == f32_to_bf16_bits(np.float32(-1e-7))).all()
    assert (r4.biases[1] == 0).all() and (r4.q[1] == 0).all()  # zeros of either sign: same as zeros
    assert (b4[2] == 0.375).all() and (b4[3] == -3.0).all() and (r4.q[2:4] == 0).all()  # constants: on the bias
    # (w + 8) / 1 = k + 0.5 rounds to the even k (rounding half away would give k + 1 for even k).
    assert (s4[4] == 1.0).all() and (b4[4] == -8.0).all()
    assert r4.q[4, 2:17].tolist() == [0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14]
    s8, b8 = bf16_bits_to_f32(r8.scales), bf16_bits_to_f32(r8.biases)
    assert (s8[5] == 1.0).all() and (b8[5] == -128.0).all() and (r8.q[5, 2:32] % 2 == 0).all()
    # edge / s = 14.5 / -1 -> q0 = -14 (even): s = 14.5 / -14.
    assert (r4.scales_f32[6] == np.float32(14.5) / np.float32(-14.0)).all() and (b4[6] == 14.5).all()
    assert (r4.scales_f32[7] > 0).all() and (r4.scales_f32[8] < 0).all()  # negative / positive dominant
    assert (r4.biases[9] == 0).all() and (r4.scales[9] == f32_to_bf16_bits(np.float32(1e-7))).all()  # subnormals: q0 = 0
    # The huge value is the edge (q = 0, bias 300, s = 300 / -15): the rest of its group lands on 15.
    assert r4.q[10, 0] == 0 and (r4.q[10, 1:32] == 15).all() and b4[10, 0] == 300.0


def test_verification_rebuilds_every_part(written, tmp_path):
    src, out, tensors, _ = written
    assert engine.compare(src, out, tensors).mismatches == ()


def test_compressed_tensors_and_affine_side_by_side(tmp_path):
    """Both schemes of the same weight in one output: each is its own tensor, with its own parts."""
    src = write_safetensors(tmp_path / "src.safetensors", {"w": SOURCES["bf16"]})
    ct = TensorPlan("ct.weight_packed", "w", engine.copy(), Quantization(4, 32, "ct.weight_scale", "ct.weight_shape", "ct.weight"))
    mx = TensorPlan("w.weight", "w", engine.copy(), AffineQuantization(4, 32, "w.scales", "w.biases", "w.weight"))
    report = engine.execute(src, [OutputPlan(tmp_path / "out", [ct, mx])])
    got = read_checkpoint(tmp_path / "out")
    assert set(got) == {"ct.weight_packed", "ct.weight_scale", "ct.weight_shape", "w.weight", "w.scales", "w.biases"}
    assert [(r.name, r.scheme, r.parts) for r in report.quantized] == [
        ("ct.weight_packed", "compressed_tensors", ("ct.weight_scale", "ct.weight_shape")),
        ("w.weight", "mlx_affine", ("w.scales", "w.biases")),
    ]
    assert np.array_equal(got["w.weight"], reference_affine_quantize(as_float32(SOURCES["bf16"][1]), 4, 32).words)
    entries = mx.entries(W.shape, "BF16")
    assert {n: (tuple(got[n].shape), d) for n, (_, d) in entries.items()} == entries


@pytest.mark.parametrize(
    "bits, group, width, message",
    [
        (4, 16, 256, "affine quantization group size must be 32, 64 or 128 (what mlx computes with), not 16"),
        (2, 32, 256, "affine quantization bits must be 4 or 8, not 2"),
        (4, 64, 96, "width 96 is not a multiple of the quantization group size 64 (every group must be whole)"),
    ],
)
def test_refusals_name_the_value_and_the_rule(tmp_path, bits, group, width, message):
    src = write_safetensors(tmp_path / "src.safetensors", {"w": SOURCES["bf16"]})
    t = TensorPlan("w.weight", "w", engine.keep_cols(width), AffineQuantization(bits, group, "w.scales", "w.biases", "w.weight"))
    with pytest.raises(SourceError) as e:
        engine.execute(src, [OutputPlan(tmp_path / "out", [t])])
    assert str(e.value) == f"tensor w -> w.weight: {message}"
    assert not (tmp_path / "out").exists()


def test_nan_is_refused_with_its_row(tmp_path):
    w = SOURCES["bf16"][1].copy()
    w[5, 70] = 0x7FC0  # NaN
    src = write_safetensors(tmp_path / "src.safetensors", {"w": ("BF16", w)})
    t = TensorPlan("w.weight", "w", engine.keep_row_blocks(1, [5, 6]), AffineQuantization(4, 64, "w.scales", "w.biases", "w.weight"))
    with pytest.raises(SourceError, match=r"tensor w: row 0 of w.weight holds NaN or infinity, which cannot be quantized$"):
        engine.execute(src, [OutputPlan(tmp_path / "out", [t])])
    assert not (tmp_path / "out").exists()
