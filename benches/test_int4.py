"""E4B -> E2B with int4 quantization (issue 6), written against the documented CLI:
``gslice slice ... --quant int4 [--group-size N]``. Runs when the installed gslice has that
option; until then it is skipped with the reason shown."""

from __future__ import annotations

import json
import shutil

import pytest
import synth
from click.testing import CliRunner
from conftest import report

from gslice.cli import main

HAS_QUANT = any(p.name == "quant" for p in main.commands["slice"].params)


@pytest.mark.skipif(not HAS_QUANT, reason="gslice slice has no --quant option yet (issue 6): enable when it lands")
@pytest.mark.parametrize("group_size", [128])
def test_slice_int4_mid(benchmark, mid, out_dir, group_size):
    spec = synth.e2b_spec("mid")
    args = ["slice", str(mid), "-o", str(out_dir), "--layers-to-skip", "20-24", "--ffn-dims", str(spec["ffn_dims"]),
            "--quant", "int4", "--group-size", str(group_size), "--json", "-q"]

    def run():
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    result = benchmark.pedantic(run, setup=lambda: shutil.rmtree(out_dir, ignore_errors=True), rounds=5, iterations=1)
    report(f"slice int4 g{group_size} mid (E2B spec)", benchmark, result["bytes_written"])
