"""Slicing speed on the ~1 GB checkpoint, and the fixed costs measured on the full E4B layout:
reading and validating a 1,676-tensor index, and planning E4B -> E2B."""

from __future__ import annotations

import shutil

import synth
from conftest import report

import gslice
from gslice import engine
from gslice.slicing import prepare_slice
from gslice.spec import SliceSpec


def test_slice_bf16_mid(benchmark, mid, out_dir):
    """E4B -> E2B (skip 20-24, FFN halved) in bf16: the engine end to end, fsync included."""
    spec = synth.e2b_spec("mid")

    def run():
        return gslice.slice_model(mid, out_dir, max_shard_size=synth.max_shard_size("mid"), **spec)

    result = benchmark.pedantic(run, setup=lambda: shutil.rmtree(out_dir, ignore_errors=True), rounds=5, iterations=1)
    assert result.layers == 30 and result.ffn_dims == [2048] * 30 and len(result.shards) == 3  # as at full size
    report("slice bf16 mid (E2B spec)", benchmark, result.bytes_written)


def test_inspect_full_layout(benchmark, sparse_e4b):
    """Opening the full-size E4B layout: 4 shard headers and the index, strictly validated."""
    info = benchmark(engine.inspect, sparse_e4b)
    assert len(info.tensors) == 1676 and info.total_bytes == 15_699_956_384
    report("inspect 1,676-tensor E4B index", benchmark)


def test_plan_e4b_to_e2b(benchmark, sparse_e4b):
    """Everything before the first byte is written, at full size: config, checks, plan."""
    spec = SliceSpec.build(**synth.e2b_spec("full"))
    plan = benchmark(prepare_slice, sparse_e4b, spec)
    assert plan.params().effective == 1_905_495_648  # docs/design.md's figure for E2B on E4B
    report("plan E4B -> E2B (full-size layout)", benchmark)
