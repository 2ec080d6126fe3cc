"""The command line: info, demo, the JSON report, and the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gslice.testing import E4B_LIKE, tensor_shapes


def test_info_json(cli, e4b):
    result = cli("info", e4b, "--json")
    assert result.code == 0, result.err
    d = json.loads(result.out)
    assert d["layers"] == 35
    assert d["kv_sharing"] == {"num_kv_shared_layers": 15, "first_shared": 20, "producers": {"sliding_attention": 18, "full_attention": 19}}
    assert d["full_attention_layers"] == [4, 9, 14, 19, 24, 29, 34]
    assert d["tensors"] == len(tensor_shapes(E4B_LIKE))
    assert d["shards"] == 2
    assert d["towers"]["audio"]["present"] and d["towers"]["audio"]["blocks"] == 12
    assert d["towers"]["vision"]["params"] > 0


def test_info_table(cli, e4b):
    result = cli("info", e4b)
    assert result.code == 0
    summary, runtimes = result.out.split("\n\n")
    lines = dict(line.split("  ", 1) for line in summary.splitlines())
    assert lines["layers"].strip() == "35: sliding_attention x 28, full_attention x 7"
    assert lines["KV sharing"].strip() == "layers 20-34 reuse the K/V of layers 18 (sliding_attention), 19 (full_attention)"
    assert lines["FFN widths"].strip() == "64 x 35"


def test_slice_json_report(cli, e4b, tmp_path):
    result = cli("slice", e4b, "-o", tmp_path / "out", "--layers-to-skip", "20-24", "--ffn-dims", "32", "--json")
    assert result.code == 0, result.err
    r = json.loads(result.out)
    assert r["layers"] == 30 and r["source_layers"] == 35
    assert r["ffn_dims"] == [32] * 30
    assert r["num_kv_shared_layers"] == 10
    assert r["spec"]["layers_to_skip"] == [20, 21, 22, 23, 24]
    assert r["shards"] == ["model.safetensors"]
    assert r["params"]["effective"] < r["source_params"]["effective"]


def test_slice_table(cli, e4b, tmp_path):
    result = cli("slice", e4b, "-o", tmp_path / "out", "--layers-to-skip", "20,21,22,23,24")
    assert result.code == 0
    rows = dict(line.split(None, 1) for line in result.out.splitlines())
    assert rows["layers"] == "30 of 35 (skipped 20-24)"
    assert rows["output"] == str(tmp_path / "out")


def test_demo(cli):
    result = cli("demo")
    assert result.code == 0, result.err
    assert "verified      all 1019 tensors byte-identical to an independent numpy slice; config checked" in result.out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "gslice"
    result = subprocess.run([script, "slice", "/nonexistent", "-o", "/tmp/x"], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, "error: source /nonexistent does not exist\n")
    version = subprocess.run([sys.executable, "-m", "gslice", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("gslice, version ")
