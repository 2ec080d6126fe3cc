"""Many presets in one run. ``gslice bulk`` (issue 7) takes preset names whose FFN widths are
E4B's, so at this checkpoint's narrower widths the 16 official presets go straight to the
engine, scaled, as one plan with dedupe (benches/engine_bulk.py): the machinery bulk is built
on. benches/full.py measures ``gslice bulk`` itself at full size once it exists."""

from __future__ import annotations

import shutil

import engine_bulk
from conftest import report


def test_engine_bulk_official_presets_mid(benchmark, mid, out_dir):
    result = benchmark.pedantic(lambda: engine_bulk.bulk(mid, out_dir, "mid"),
                                setup=lambda: shutil.rmtree(out_dir, ignore_errors=True), rounds=3, iterations=1)
    assert result["presets"] == 16
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(engine_bulk.synth.slug(n) for n in engine_bulk.synth.official_presets("mid"))
    report(f"engine bulk, 16 official presets scaled (mid; {result['bytes_if_independent'] / 1e9:.2f} GB if written separately)",
           benchmark, result["bytes_written"])
