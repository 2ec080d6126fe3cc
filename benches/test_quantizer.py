"""Quantizer throughput: GB of BF16 input per second on a ~256 MB synthetic weight.

Not part of the test run (``testpaths`` is ``tests``). Run it with

    python -m pytest benches/test_quantizer.py --benchmark-enable -s

Each case reads one [8192, 16384] BF16 tensor (256 MiB) from the page cache (a warm-up round
reads it first) and writes its output with 2 threads; the time includes writing and fsync of the
output shard, as in a real slice. Cases: a plain copy (the I/O floor), int4 and int8 of the
whole tensor (compressed-tensors, groups of 128), MLX's affine 4-bit and 8-bit (groups of 64,
``mlx_lm.convert``'s default), and int4 / MLX 4-bit fused with a leading-column slice (half the
columns, as ``down_proj`` of an FFN narrowed from 16384 to 8192). The ``tmpfs`` variants write to
/dev/shm, which takes the disk out and leaves the quantizer's own speed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gslice import engine
from gslice.engine import AffineQuantization, OutputPlan, Quantization, TensorPlan
from gslice.testing import random_bf16, write_safetensors

ROWS, COLS = 8192, 16384
THREADS = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "w.safetensors"
    rng = np.random.default_rng(0)
    write_safetensors(path, {"w": ("BF16", random_bf16(rng, (ROWS, COLS), scale=0.02))})
    return path


def quantized(bits: int, op) -> TensorPlan:
    q = Quantization(bits, 128, "w.weight_scale", "w.weight_shape", "w.weight")
    return TensorPlan("w.weight_packed", "w", op, q)


def mlx(bits: int, op) -> TensorPlan:
    return TensorPlan("w.weight", "w", op, AffineQuantization(bits, 64, "w.scales", "w.biases", "w.weight"))


CASES = {
    "copy": (TensorPlan("w", "w"), COLS),
    "int4": (quantized(4, engine.copy()), COLS),
    "int8": (quantized(8, engine.copy()), COLS),
    "int4_cols_half": (quantized(4, engine.keep_cols(COLS // 2)), COLS // 2),
    "mlx4": (mlx(4, engine.copy()), COLS),
    "mlx8": (mlx(8, engine.copy()), COLS),
    "mlx4_cols_half": (mlx(4, engine.keep_cols(COLS // 2)), COLS // 2),
}


SHM = Path("/dev/shm")


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
@pytest.mark.parametrize("case", list(CASES))
def test_quantize_throughput(benchmark, source, tmp_path, case, where):
    tensor, cols_read = CASES[case]
    if where == "tmpfs" and not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    out = (SHM / f"gslice-bench-{os.getpid()}" if where == "tmpfs" else tmp_path) / "out"

    def run():
        return engine.execute(source, [OutputPlan(out, [tensor], overwrite=True)], threads=THREADS)

    def cleanup():
        shutil.rmtree(out, ignore_errors=True)

    run()  # warm the page cache with the source
    cleanup()
    report = benchmark.pedantic(run, setup=cleanup, rounds=5, iterations=1)
    gb = ROWS * cols_read * 2 / 1e9
    best, mean = benchmark.stats.stats.min, benchmark.stats.stats.mean
    extra = ""
    if report.quantized:
        q = report.quantized[0]
        extra = f", rel RMS error {q.rel_rms_error:.4f}, {q.bytes_before / 1e6:.0f} MB -> {q.bytes_after / 1e6:.1f} MB"
    shutil.rmtree(out.parent if where == "tmpfs" else out, ignore_errors=True)
    print(f"\n{case} ({where}): {gb:.3f} GB of BF16 read, {THREADS} threads: best {gb / best:.2f} GB/s, "
          f"mean {gb / mean:.2f} GB/s{extra}")
