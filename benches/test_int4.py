"""E4B -> E2B with int4 quantization fused into the slice (the E2B spec at mid size), against
which benches/test_slice.py's bf16 figure is the reference (target: int4 <= 1.5 x bf16)."""

from __future__ import annotations

import shutil

import pytest
import synth
from conftest import report

import gslice


@pytest.mark.parametrize("group_size", [128])
def test_slice_int4_mid(benchmark, mid, out_dir, group_size):
    spec = synth.e2b_spec("mid")

    def run():
        return gslice.slice_model(mid, out_dir, quant="int4", group_size=group_size,
                                  max_shard_size=synth.max_shard_size("mid"), **spec)

    result = benchmark.pedantic(run, setup=lambda: shutil.rmtree(out_dir, ignore_errors=True), rounds=5, iterations=1)
    assert result.layers == 30
    report(f"slice int4 g{group_size} mid (E2B spec)", benchmark, result.bytes_written)
