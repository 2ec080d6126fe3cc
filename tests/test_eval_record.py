"""Recording evaluation results into a gslice output (gslice/evaluation/record.py): the
manifest gains an `evaluations` entry and the model card a section, both worded "measured on
<text>, <tokens> tokens, <runtime>"; `gslice verify` still finds the folder exactly as its
manifest describes it, and still catches a later edit of the card."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gslice import slice_model
from gslice.errors import SourceError
from gslice.evaluation.metrics import Summary
from gslice.evaluation.record import check_recordable, record
from gslice.evaluation.report import EvalReport, ModelResult, TextInfo
from gslice.evaluation.run import RunStats
from gslice.verify import verify_output

RUNTIME = "llama.cpp (llama-cpp-python 0.3.36)"


def report_for(folder: Path, context: int = 512, kl_mean: float = 0.125) -> tuple[EvalReport, ModelResult]:
    run = RunStats(RUNTIME, {}, 2, 1.5, 10.0, 0.5, 1234 + 3, 2_100_000_000, True, measured="2026-01-02T03:04:05Z")
    source = ModelResult("source", "/models/source.gguf", Summary(1234, 9.5, 0, 0, 0, 1, 0.05), run)
    result = ModelResult("slice", str(folder), Summary(1234, 11.25, kl_mean, 0.0625, 1.5, 0.875, 0.05), run)
    text = TextInfo("chapter-1.txt", 5000, "ab" * 32, 1234)
    return EvalReport([text], "chapter-1.txt", context, context - 1, 32, None, 3, 1234, source, [result], None), result


@pytest.fixture
def out(e4b, tmp_path) -> Path:
    folder = tmp_path / "out"
    slice_model(e4b, folder, layers_to_skip=range(20, 25), ffn_dims=32)
    return folder


def test_results_go_into_manifest_and_card_and_verify_still_passes(out, cli):
    card_before = (out / "README.md").read_text()
    rep, res = report_for(out)
    entry = record(out, rep, res)
    manifest = json.loads((out / "gslice-manifest.json").read_text())
    assert manifest["evaluations"] == [entry]
    assert entry["measured_on"] == f"measured on chapter-1.txt, 1,234 tokens, {RUNTIME}"
    assert (entry["perplexity"], entry["kl_mean"], entry["top1_agreement"], entry["against"]["perplexity"]) == (11.25, 0.125, 0.875, 9.5)
    card = (out / "README.md").read_text()
    assert card.startswith(card_before.rstrip("\n"))  # the card gslice wrote is kept as it was
    assert f"| measured on chapter-1.txt, 1,234 tokens, {RUNTIME} | 512 | 11.250 (9.500) | 0.1250 / 0.0625 / 1.5000 | 87.5% | 123.7 (2 threads) | 2.10 GB |" in card
    assert "not a general quality claim" in card
    assert verify_output(out).ok
    r = cli("verify", out)
    assert r.code == 0 and r.out.startswith(f"{out}: ok (")


def test_a_new_measurement_of_the_same_setup_replaces_the_old_one_and_another_setup_adds_one(out):
    record(out, *report_for(out, kl_mean=0.5))
    record(out, *report_for(out, kl_mean=0.25))
    record(out, *report_for(out, context=256))
    evaluations = json.loads((out / "gslice-manifest.json").read_text())["evaluations"]
    assert [(e["context"], e["kl_mean"]) for e in evaluations] == [(512, 0.25), (256, 0.125)]
    card = (out / "README.md").read_text()
    assert card.count("<!-- gslice-eval:start -->") == 1 and card.count("| measured on chapter-1.txt") == 2
    assert verify_output(out).ok


def test_an_edited_card_is_reported_by_verify_and_never_overwritten(out, cli):
    record(out, *report_for(out))
    card = out / "README.md"
    recorded = card.stat().st_size
    card.write_text(card.read_text() + "\nmy notes\n")
    r = cli("verify", out)
    assert (r.code, r.out) == (1, f"{out}: README.md: {recorded + 10} bytes, the manifest says {recorded}\n")
    with pytest.raises(SourceError) as e:
        record(out, *report_for(out, kl_mean=0.3))
    assert str(e.value) == f"--record: {card} was changed after gslice wrote it; not overwriting it"
    assert card.read_text().endswith("my notes\n")


def test_the_card_is_replaced_by_a_rename_so_a_hard_link_elsewhere_keeps_the_old_text(out, tmp_path):
    elsewhere = tmp_path / "linked-README.md"
    os.link(out / "README.md", elsewhere)
    before = elsewhere.read_bytes()
    record(out, *report_for(out))
    assert elsewhere.read_bytes() == before and (out / "README.md").read_bytes() != before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_only_gslice_outputs_are_recorded_into(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    with pytest.raises(SourceError, match="has no gslice-manifest.json: gslice records results only into outputs it wrote"):
        check_recordable(theirs)
