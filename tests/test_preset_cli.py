"""`gslice presets` (table, JSON, Markdown in the README, plot) and `gslice plan`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import gslice

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- presets-table:start (gslice presets --markdown) -->", "<!-- presets-table:end -->"


def test_presets_json(cli):
    result = cli("presets", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    ids = [p["id"] for p in data["presets"]]
    assert ids == [p.id for p in gslice.presets()]
    assert len(ids) == 29 and ids[0] == "google-main" and ids[-1] == "gslice-e2.29b"
    e2b = data["presets"][1]
    assert (e2b["name"], e2b["published_effective_b"], e2b["published_mmlu"]) == ("Config for official E2B Model", 1.91, 50.9)
    assert e2b["plan"]["params"]["effective"] == 1_905_495_648
    assert e2b["plan"]["footprints"]["bf16"]["disk_bytes"] == 2 * e2b["plan"]["params"]["total"]
    small = data["presets"][16]
    assert (small["id"], small["quality"], small["published_mmlu"]) == ("gslice-e0.51b", "unmeasured quality (untrained widths)", None)
    assert [v["name"] for v in data["proposals"]][0] == "Custom 0.9B (26-layer)"
    assert data["proposals"][0]["params"]["effective"] == 1_472_333_088


def test_presets_table(cli):
    result = cli("presets", "--modalities", "text", "--context", "1024")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["preset", "layers", "effective", "published", "MMLU", "total", "bf16", "int4", "GGUF", "q8_0",
                                "GGUF", "q4_k_m", "GGUF", "q4_0", "RAM", "bf16", "RAM", "int4", "quality", "runtimes"]
    row = next(line for line in lines if line.startswith("google-e2b "))
    assert row.split()[:6] == ["google-e2b", "30", "1.91B", "1.91B", "50.9%", "4.46B"]
    cells = re.split(r"\s{2,}", row)
    assert cells[-2:] == ["published", "all"]
    assert cells[8:11] == ["4.74 GB", "3.30 GB", "3.24 GB"]  # GGUF files: llama.cpp computes the slice
    row = next(line for line in lines if line.startswith("google-e1.96b-layer "))
    cells = re.split(r"\s{2,}", row)
    assert cells[-2:] == ["published", "all but llama.cpp, mlx-vlm"]
    assert cells[8:11] == ["-", "-", "-"]  # --format gguf refuses it
    assert "towers kept: text" in result.out and "KV cache for 1024 tokens" in result.out
    assert "proposal-custom-0.9b-26-layer  (Custom 0.9B (26-layer)): claims 0.95B; computed 1.47B effective, 4.74B total" in result.out


def test_readme_table_is_generated(cli):
    text = README.read_text()
    assert START in text and END in text
    section = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == cli("presets", "--markdown").out.strip()


def test_presets_plot(cli, tmp_path):
    png = tmp_path / "presets.png"
    result = cli("presets", "--plot", png)
    assert result.code == 0, result.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_presets_plot_without_matplotlib(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = cli("presets", "--plot", tmp_path / "p.png")
    assert (result.code, result.out, result.err) == (2, "", "error: --plot needs matplotlib: pip install 'gslice[plot]'\n")
    assert not (tmp_path / "p.png").exists()


def test_plan_from_headers(cli, e4b):
    result = cli("plan", e4b, "--preset", "google-e2b", "--text-only")
    assert result.code == 0, result.err
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.out.split("\n\n")[0].splitlines())
    assert rows["layers"] == "30 of 35 (skipped 20-24)"
    assert rows["FFN widths"] == "32 x 30"
    assert rows["preset"] == "google-e2b"
    p = gslice.plan(e4b, preset="google-e2b", modalities="text")
    assert rows["parameters"].startswith(f"effective {p.params.effective:,}, ")
    assert "RAM = resident weights + KV cache" in result.out
    as_json = json.loads(cli("plan", e4b, "--preset", "google-e2b", "--text-only", "--json").out)
    assert as_json == json.loads(json.dumps(p.to_dict()))


def test_plan_from_config_with_spec_options(cli, e4b):
    result = cli("plan", e4b / "config.json", "--layers-to-skip", "20-24", "--ffn-dims", "32", "--drop-vision", "--json")
    assert result.code == 0, result.err
    d = json.loads(result.out)
    assert (d["layers"], d["num_kv_shared_layers"], d["params"]["vision"]) == (30, 10, 0)
    assert d["params"] == json.loads(json.dumps(gslice.plan(e4b, preset="google-e2b", modalities="text+audio").params.__dict__))


def test_plan_refusals(cli, e4b):
    result = cli("plan", e4b, "--preset", "google-e2b", "--ffn-dims", "32")
    assert (result.code, result.err) == (2, "error: give either --preset or --layers-to-skip/--ffn-dims/--spec, not both\n")
    result = cli("plan", e4b, "--layers-to-skip", "19")
    assert result.code == 2 and result.err.startswith("error: layers_to_skip: layer 19 is the KV producer")
