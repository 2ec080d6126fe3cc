"""`gslice bulk --eval`: every output evaluated against the source (run once) in transformers,
the figures in bulk's table and in each output's manifest and model card, and `gslice verify`
still passing on every output."""

from __future__ import annotations

import json
import re
import shutil

from gslice.evaluation.report import fmt_kl
from gslice.evaluation.run import RUNS
from gslice.evaluation.texts import SAMPLE_NAME
from gslice.testing import E4B_LIKE, write_sentencepiece, write_tiny_checkpoint


def test_bulk_eval_measures_and_records_every_output(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", E4B_LIKE, shards=2)
    write_sentencepiece(src, E4B_LIKE.vocab)
    out = tmp_path / "out"
    RUNS.clear()
    r = cli("bulk", src, "--presets", "google-main,google-e2b", "-o", out, "--eval", "sample",
            "--eval-context", "48", "--eval-max-tokens", "120", "--jobs", "1")
    assert r.code == 0, r.err
    assert [path.rsplit("/", 1)[-1] for _, path in RUNS] == ["src", "google-main", "google-e2b"]  # the source once
    head, main_row, e2b_row = r.out.splitlines()[:3]
    assert head.split()[:12] == ["preset", "layers", "effective", "total", "size", "written", "time", "perplexity", "KL", "mean", "KL", "p99"]
    # google-main keeps every layer at full width: the source itself, so KL 0 and full agreement
    assert re.search(r" 0\.0000 +0\.0000 +100\.0% ", main_row), main_row
    runtime = None
    for slug in ("google-main", "google-e2b"):
        manifest = json.loads((out / slug / "gslice-manifest.json").read_text())
        (e,) = manifest["evaluations"]
        runtime = e["runtime"]
        assert runtime.startswith("transformers 5.23.0")
        assert e["measured_on"] == f"measured on {SAMPLE_NAME}, 120 tokens, {runtime}"
        assert e["against"]["path"] == str(src) and e["context"] == 48
        assert e["measured_on"] in (out / slug / "README.md").read_text()
    e2b = json.loads((out / "google-e2b" / "gslice-manifest.json").read_text())["evaluations"][0]
    assert e2b["kl_mean"] > 0 and f" {fmt_kl(e2b['kl_mean'])} " in e2b_row
    assert f"{SAMPLE_NAME}, 120 tokens, {runtime}" in r.out
    v = cli("verify", out)
    assert v.code == 0 and v.out.count(": ok (") == 2
    # --resume keeps the outputs (their manifests still check out) and measures them again
    again = cli("bulk", src, "--presets", "google-main,google-e2b", "-o", out, "--resume", "--eval", "sample",
                "--eval-context", "48", "--eval-max-tokens", "120", "--jobs", "1", "--json")
    assert again.code == 0, again.err
    rows = json.loads(again.out)["rows"]
    assert [row["status"] for row in rows] == ["skipped", "skipped"]
    assert [row["eval"]["kl_mean"] for row in rows] == [0.0, e2b["kl_mean"]]
    assert len(json.loads((out / "google-e2b" / "gslice-manifest.json").read_text())["evaluations"]) == 1
    assert cli("verify", out).code == 0
    shutil.rmtree(out)
