"""``gslice bulk`` of Google's 16 official presets on the ~1 GB checkpoint. The presets are
defined on E4B; gslice scales their FFN widths by the source's width (4096 / 16384 here), so
the same 16 outputs are produced, at a quarter of the width."""

from __future__ import annotations

import shutil

import synth
from conftest import report

from gslice.bulk import prepare_bulk, select_presets, write_bulk


def test_bulk_official_presets_mid(benchmark, mid, out_dir):
    presets = select_presets("official")

    def run():
        return write_bulk(prepare_bulk(mid, presets, out_dir), max_shard_size=synth.max_shard_size("mid"))

    result = benchmark.pedantic(run, setup=lambda: shutil.rmtree(out_dir, ignore_errors=True), rounds=3, iterations=1)
    assert [r.status for r in result.rows] == ["written"] * 16
    report(f"bulk, 16 official presets (mid; {result.bytes_if_independent / 1e9:.2f} GB if written separately)",
           benchmark, result.bytes_written)
