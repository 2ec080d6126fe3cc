"""Evaluation results of a GGUF output (gslice/evaluation/sidecar.py): the file carries its
manifest inside and is never rewritten, so the results go to <file>.gslice-eval.json next to it,
bound to the file by the digest its manifest records. The results file follows the ownership
rule with its GGUF file: a writer refuses one gslice did not write, replaces one of gslice's
only with --overwrite and removes it once a new file takes the old one's place; `gslice verify`
checks it. And `bulk --format gguf --eval` plans the source, unsliced, as its reference.

The figures recorded here come from made-up reports: the runtimes are the interop tier's
(tests/interop/test_eval_outputs.py runs them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import gslice
from gslice import ownership
from gslice.errors import SourceError
from gslice.evaluation.record import check_recordable, record, where
from gslice.formats import gguf as gguf_format
from gslice.testing import LLAMA_LIKE, with_changes, write_sentencepiece, write_tiny_checkpoint

from conftest import hidden_leftovers
from test_eval_record import RUNTIME, report_for


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory) -> Path:
    src = write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "llama", LLAMA_LIKE, shards=2)
    write_sentencepiece(src, 300)
    return src


@pytest.fixture
def out(llama_src, tmp_path) -> Path:
    path = tmp_path / "e.gguf"
    gslice.slice_model(llama_src, path, layers_to_skip=[21, 23], format=gslice.GGUF("q8_0"))
    return path


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + ".gslice-eval.json")


def test_results_go_next_to_the_file_which_is_never_rewritten(out, llama_src, cli):
    before = out.read_bytes()
    entry = record(out, *report_for(out))
    assert out.read_bytes() == before
    data = json.loads(sidecar_of(out).read_text())
    assert data == {"format": "gslice-eval/1", "output": "e.gguf", "file_sha256": gguf_format.read_manifest(out)["file_sha256"],
                    "evaluations": [entry]}
    assert entry["measured_on"] == f"measured on chapter-1.txt, 1,234 tokens, {RUNTIME}"
    assert where(out) == str(sidecar_of(out))
    r = cli("verify", out, "--against", llama_src)
    assert r.code == 0 and r.out.startswith(f"{out}: ok (1 files match their sha256; 559 tensors "), r.out
    # the same setup measured again replaces its entry; another setup adds one
    record(out, *report_for(out, kl_mean=0.25))
    record(out, *report_for(out, context=256))
    evaluations = json.loads(sidecar_of(out).read_text())["evaluations"]
    assert [(e["context"], e["kl_mean"]) for e in evaluations] == [(512, 0.25), (256, 0.125)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.gguf", "e.gguf.gslice-eval.json"]  # no temporary file left


def test_a_new_file_in_its_place_takes_the_results_of_the_old_one_away(out, llama_src, cli):
    record(out, *report_for(out))
    args = ("slice", llama_src, "-o", out, "--format", "gguf", "--gguf-type", "q4_0", "-q")
    exists = cli(*args)
    assert (exists.code, exists.err) == (2, f"error: output path {out} already exists (pass overwrite=True / --overwrite to replace a previous gslice output)\n")
    assert cli(*args, "--overwrite").code == 0
    assert not sidecar_of(out).exists() and cli("verify", out).code == 0
    # results whose file is gone still stand for it: a new file there needs --overwrite too
    record(out, *report_for(out))
    out.unlink()
    again = cli(*args)
    assert (again.code, again.err) == (2, f"error: output path {out}: {sidecar_of(out)} (its evaluation results) already exists "
                                          "(pass overwrite=True / --overwrite to replace a previous gslice output)\n")
    assert cli(*args, "--overwrite").code == 0 and not sidecar_of(out).exists()


def test_results_of_a_replaced_file_are_reported_and_dropped(out, llama_src, cli):
    """What a run killed between putting the new file in place and removing the old results
    leaves: results bound to another digest."""
    record(out, *report_for(out))
    old = sidecar_of(out).read_bytes()
    old_digest = json.loads(old)["file_sha256"]
    assert cli("slice", llama_src, "-o", out, "--format", "gguf", "--gguf-type", "q4_0", "--overwrite", "-q").code == 0
    sidecar_of(out).write_bytes(old)
    digest = gguf_format.read_manifest(out)["file_sha256"]
    r = cli("verify", out)
    assert (r.code, r.out) == (1, f"{out}: e.gguf.gslice-eval.json holds the evaluations of another file (sha256 {old_digest[:12]}..., "
                                  f"this file's is {digest[:12]}...): a run that replaced e.gguf left it; delete it\n")
    record(out, *report_for(out, context=256))
    data = json.loads(sidecar_of(out).read_text())
    assert data["file_sha256"] == digest and [e["context"] for e in data["evaluations"]] == [256]
    assert cli("verify", out).code == 0


def test_a_file_gslice_did_not_write_where_the_results_go_is_never_replaced(out, llama_src, cli, installed):
    theirs = sidecar_of(out)
    theirs.write_text("my notes\n")
    r = cli("slice", llama_src, "-o", out, "--format", "gguf", "--overwrite")
    assert (r.code, r.out, r.err) == (2, "", f"error: output path {out}: {theirs} is where gslice keeps its evaluation results, "
                                             "and it holds a file gslice did not write; refusing to replace it\n")
    with pytest.raises(SourceError) as e:
        check_recordable(out)
    assert str(e.value) == f"--record: {theirs} exists and was not written by gslice; not overwriting it"
    installed("llama_cpp")
    r = cli("eval", out, "--against", out, "--record")
    assert (r.code, r.err) == (2, f"error: --record: {theirs} exists and was not written by gslice; not overwriting it\n")
    v = cli("verify", out)
    assert (v.code, v.out) == (1, f"{out}: evaluation file {theirs} is not valid JSON: Expecting value at line 1 column 1\n")
    assert theirs.read_text() == "my notes\n" and hidden_leftovers(out.parent) == []
    theirs.unlink()
    theirs.mkdir()
    r = cli("slice", llama_src, "-o", out, "--format", "gguf", "--overwrite")
    assert r.err == (f"error: output path {out}: {theirs} is where gslice keeps its evaluation results, and it holds a path gslice "
                     "did not write; refusing to replace it\n")


def test_companions_follow_a_file_replaced_before_a_run_stopped(tmp_path):
    """An interrupted write: the outputs put in place before it stopped were replaced, so their
    old results go; an output the run never reached keeps its own."""
    done, untouched = tmp_path / "a.gguf", tmp_path / "b.gguf"
    for f in (done, untouched):
        f.write_bytes(b"old")
        sidecar_of(f).write_text(json.dumps({"format": "gslice-eval/1", "output": f.name, "file_sha256": "0" * 64, "evaluations": []}))
    with pytest.raises(KeyboardInterrupt), ownership.companions_follow([done, untouched]):
        staged = tmp_path / ".staged"
        staged.write_bytes(b"new")
        os.replace(staged, done)
        raise KeyboardInterrupt
    assert not sidecar_of(done).exists() and sidecar_of(untouched).exists()


def test_bulk_gguf_eval_plans_the_source_unsliced_as_its_reference(tmp_path, cli, installed):
    src = write_tiny_checkpoint(tmp_path / "src", with_changes(LLAMA_LIKE, num_layers=35, num_kv_shared=15, audio=False, vision=False))
    write_sentencepiece(src, 300)
    installed("llama_cpp")
    base = ("bulk", src, "--presets", "google-main,google-e2b", "-o", tmp_path / "out", "--format", "gguf", "--dry-run", "--json")
    for file_type, reference in (("q4_0", "source-q8_0"), ("q8_0", "source-q8_0"), ("f16", "source-f16"), (None, "source-bf16")):
        r = cli(*base, *(["--gguf-type", file_type] if file_type else []), "--eval", "sample")
        assert r.code == 0, r.err
        rows = json.loads(r.out)["rows"]
        assert [row["slug"] for row in rows] == [reference, "google-main", "google-e2b"]
        assert rows[0]["dir"] == str(tmp_path / "out" / f"{reference}.gguf") and rows[0]["layers"] == 35
    plain = cli(*base, "--gguf-type", "q4_0")  # no --eval: no reference
    assert [row["slug"] for row in json.loads(plain.out)["rows"]] == ["google-main", "google-e2b"]
    installed()
    r = cli(*base[:-2], "--eval", "sample")
    assert (r.code, r.err) == (2, "error: each output runs in llama.cpp, which is not installed (llama_cpp missing): "
                                  "pip install 'gslice[llama-cpp]'\n")
    assert not (tmp_path / "out").exists()


def test_the_reference_of_each_output_format():
    """bulk --eval's reference (evaluation/outputs.py): the source checkpoint for Hugging Face
    folders; for GGUF the outputs' type when it is a float type, q8_0 for every quantized type
    (the K-quants included); for MLX 8 bits, the same group size."""
    from gslice.evaluation import outputs

    assert outputs.reference_format(gslice.Safetensors()) is None
    assert outputs.runtime(gslice.Safetensors()) == "transformers"
    for given, reference in (("q4_0", "q8_0"), ("q8_0", "q8_0"), ("q4_k_m", "q8_0"), ("q5_k_m", "q8_0"), ("q6_k", "q8_0"),
                             ("q4_k", "q8_0"), ("bf16", "bf16"), ("f16", "f16"), ("f32", "f32"), (None, None)):
        got = outputs.reference_format(gslice.GGUF(given))
        assert (got.name, got.type) == ("gguf", reference), given
    assert {t for t in gguf_format.TYPES if outputs.reference_format(gslice.GGUF(t)).type == t} == {"f32", "f16", "bf16", "q8_0"}
    assert outputs.runtime(gslice.GGUF("q4_0")) == "llama.cpp"

    assert outputs.reference_format(gslice.MLX(4, 32)) == gslice.MLX(8, 32)
    assert outputs.reference_format(gslice.MLX(8)) == gslice.MLX(8)
    assert outputs.reference_format(gslice.MLX()) == gslice.MLX()
    assert outputs.runtime(gslice.MLX()) == "mlx-lm"

