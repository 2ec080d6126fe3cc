"""`gslice eval` of gslice's own outputs, end to end. GGUF as on a laptop: the source written as
a GGUF file by gslice (`gslice slice SRC -o src.gguf --format gguf`, no spec: the whole text
decoder, memory-mapped by llama.cpp), slices written as GGUF files, then
`gslice eval SLICE.gguf --against src.gguf`.

The figures are checked as test_eval.py checks them for the runtimes' own conversions: the text
tokenized by the runtime, the windows cut by the stated rule (eval_reference.py), the logits
from the runtime's own API (llama-cpp-python's `Llama`, mlx-lm's `load`), perplexity, KL (full,
or over the source's top-k plus one bucket) and top-1 agreement in numpy; equal to float64
rounding. Then where the results go: a file next to each GGUF file (its manifest is inside the
file), which `gslice verify` checks and a new file in its place removes; and `gslice bulk
--format gguf|mlx --eval`, whose reference is the source written as one more output of the run
(q8_0 / 8 bits for quantized outputs), run once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gslice.evaluation.run import RUNS
from gslice.evaluation.texts import sample_text
from gslice.formats import gguf as gguf_format

from . import tiny_text_models as tm
from .eval_reference import CONTEXT, MAX_TOKENS, STRIDE, assert_same, llama_logits, mlx_logits, reference, windows_by_rule

RUNTIME = "llama.cpp (llama-cpp-python 0.3.36)"


@pytest.fixture(scope="module")
def laptop(tmp_path_factory) -> dict[str, Path]:
    """A published-style BF16 source (the tiny model of tiny_text_models.py, peaked like a trained
    model) and the first chapter of gslice's sample as the text."""
    root = tmp_path_factory.mktemp("laptop")
    sample = sample_text().text
    text = root / "chapter-1.txt"
    text.write_text(sample[: sample.index("Chapter 2")])
    return {"src": tm.save(tm.build(logit_scale=4.0), root / "src"), "text": text, "root": root}


@pytest.fixture(scope="module")
def e4b_like(tmp_path_factory) -> Path:
    """E4B's layout (35 layers, the last 15 sharing KV), so that Google's presets apply; BF16."""
    return tm.save(tm.build(num_layers=35, num_kv_shared=15, logit_scale=4.0), tmp_path_factory.mktemp("e4b") / "e4b-like")


def write_gguf(cli, src: Path, out: Path, file_type: str, *spec: str) -> Path:
    r = cli("slice", src, "-o", out, "--format", "gguf", "--gguf-type", file_type, *spec, "-q")
    assert r.code == 0, r.err
    return out


def eval_json(cli, slices, against, text, *extra) -> dict:
    r = cli("eval", *slices, "--against", against, "--text", text, "--context", CONTEXT, "--stride", STRIDE,
            "--max-tokens", MAX_TOKENS, "--threads", "1", *extra, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def llama_reference(source: Path, text: Path, context: int, stride: int, max_tokens: int):
    """(windows, the source's logits per window) by the rule, with llama.cpp's own tokenizer."""
    run, llm = llama_logits(source, context)
    ids = [llm.tokenize(text.read_text().encode(), add_bos=False)]
    return windows_by_rule(ids, llm.token_bos(), context, stride, max_tokens), run


def test_gslice_gguf_slices_against_the_source_as_gguf_equal_numpy_on_llama_cpps_logits(laptop, cli, tmp_path):
    src, text = laptop["src"], laptop["text"]
    source = write_gguf(cli, src, tmp_path / "src.gguf", "q8_0")  # no spec: the unsliced source
    slices = [write_gguf(cli, src, tmp_path / "skip.gguf", "q8_0", "--layers-to-skip", "21,23"),
              write_gguf(cli, src, tmp_path / "narrow.gguf", "q4_0", "--ffn-dims", "64")]
    assert gguf_format.read_manifest(source)["spec"]["layers_to_skip"] == []
    report = eval_json(cli, [*slices, source], source, text, "--top-k", tm.VOCAB, "--cache-dir", tmp_path / "cache")
    windows, source_logits = llama_reference(source, text, CONTEXT, STRIDE, MAX_TOKENS)
    for i, path in enumerate(slices):
        ref = reference(windows, source_logits, llama_logits(path)[0])
        assert report["tokens_scored"] == report["slices"][i]["tokens"] == ref["tokens"] == MAX_TOKENS
        assert report["source"]["perplexity"] == pytest.approx(ref["source_perplexity"], rel=1e-9)
        assert_same(report["slices"][i], ref)
        assert report["slices"][i]["run"]["runtime"] == RUNTIME and report["slices"][i]["run"]["isolated"] is True
    itself = report["slices"][2]  # the source against itself
    assert (itself["kl_mean"], itself["kl_p99"], itself["top1_agreement"]) == (0.0, 0.0, 1.0)
    assert itself["perplexity"] == report["source"]["perplexity"]
    assert 0 < report["slices"][0]["kl_mean"] and 0 < report["slices"][1]["kl_mean"]


def test_results_are_kept_next_to_the_gguf_file_and_verify_still_passes(laptop, cli, tmp_path):
    src, text = laptop["src"], laptop["text"]
    source = write_gguf(cli, src, tmp_path / "src.gguf", "q8_0")
    out = write_gguf(cli, src, tmp_path / "e.gguf", "q8_0", "--layers-to-skip", "21,23")
    before = out.read_bytes()
    r = cli("eval", out, "--against", source, "--text", text, "--context", "64", "--max-tokens", "150", "--threads", "1",
            "--cache-dir", tmp_path / "cache", "--record")
    assert r.code == 0, r.err
    sidecar = tmp_path / "e.gguf.gslice-eval.json"
    assert r.out.endswith(f"recorded in {sidecar}\n")
    assert out.read_bytes() == before  # the GGUF file itself is never rewritten
    data = json.loads(sidecar.read_text())
    assert (data["format"], data["output"], data["file_sha256"]) == ("gslice-eval/1", "e.gguf", gguf_format.read_manifest(out)["file_sha256"])
    (entry,) = data["evaluations"]
    assert entry["measured_on"] == f"measured on chapter-1.txt, 150 tokens, {RUNTIME}"
    assert entry["against"]["path"] == str(source) and entry["context"] == 64 and entry["kl_mean"] > 0
    v = cli("verify", out, "--against", src)
    assert v.code == 0 and v.out.startswith(f"{out}: ok (1 files match their sha256; "), v.out
    # a new file in its place: the results described the old one and go with it
    assert cli("slice", src, "-o", out, "--format", "gguf", "--gguf-type", "q4_0", "--overwrite", "-q").code == 0
    assert not sidecar.exists() and cli("verify", out).code == 0


def test_bulk_gguf_eval_measures_every_output_against_the_source_written_at_q8_0(laptop, e4b_like, cli, tmp_path):
    """q4_0 outputs, so the reference is the source at q8_0, written in the same run."""
    src, out, text = e4b_like, tmp_path / "out", laptop["text"]
    args = ["bulk", src, "--presets", "google-main,google-e2b", "-o", out, "--format", "gguf", "--gguf-type", "q4_0",
            "--eval", text, "--eval-context", "64", "--eval-max-tokens", "200", "--jobs", "1"]
    RUNS.clear()
    r = cli(*args)
    assert r.code == 0, r.err
    assert [Path(p).name for _, p in RUNS] == ["source-q8_0.gguf", "google-main.gguf", "google-e2b.gguf"]  # the reference once
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.gguf{s}" for n in ("source-q8_0", "google-main", "google-e2b") for s in ("", ".gslice-eval.json"))
    reference_manifest = gguf_format.read_manifest(out / "source-q8_0.gguf")
    assert reference_manifest["output_format"] == {"name": "gguf", "type": "q8_0"}
    assert reference_manifest["spec"]["layers_to_skip"] == [] and reference_manifest["preset"]["slug"] == "source-q8_0"
    rows = [line.split()[0] for line in r.out.splitlines()[1:4]]
    assert rows == ["source-q8_0", "google-main", "google-e2b"]
    # every output's recorded figures: numpy on llama.cpp's logits, KL over the source's top 32 + one bucket
    windows, source_logits = llama_reference(out / "source-q8_0.gguf", text, 64, 63, 200)
    for name in ("google-main", "google-e2b"):
        (entry,) = json.loads((out / f"{name}.gguf.gslice-eval.json").read_text())["evaluations"]
        ref = reference(windows, source_logits, llama_logits(out / f"{name}.gguf", 64)[0], top_k=32)
        assert entry["tokens"] == ref["tokens"] == 200 and entry["against"]["path"] == str(out / "source-q8_0.gguf")
        assert entry["against"]["perplexity"] == pytest.approx(ref["source_perplexity"], rel=1e-9)
        assert_same(entry, ref)
        assert entry["kl_mean"] > 0  # q4_0 against q8_0, even for the unsliced google-main
    (own,) = json.loads((out / "source-q8_0.gguf.gslice-eval.json").read_text())["evaluations"]
    assert (own["kl_mean"], own["top1_agreement"]) == (0.0, 1.0)
    v = cli("verify", out)
    assert v.code == 0 and v.out.count(": ok (") == 3
    # --resume keeps the three files (their digests check out) and their results; the reference's
    # figures come from the cache: only the two outputs run again
    RUNS.clear()
    again = cli(*args[:-2], "--resume", "--jobs", "1", "--json")
    assert again.code == 0, again.err
    assert [row["status"] for row in json.loads(again.out)["rows"]] == ["skipped"] * 3
    assert [Path(p).name for _, p in RUNS] == ["google-main.gguf", "google-e2b.gguf"]
    assert cli("verify", out).code == 0


def test_bulk_mlx_eval_measures_every_output_against_the_source_written_at_8_bits(laptop, e4b_like, cli, tmp_path):
    """4-bit MLX outputs, so the reference is the source at 8 bits (same group size), written in
    the same run; each folder's manifest and model card get the figures."""
    out, text = tmp_path / "out", laptop["text"]
    RUNS.clear()
    r = cli("bulk", e4b_like, "--presets", "google-main,google-e2b", "-o", out, "--format", "mlx", "--mlx-bits", "4",
            "--eval", text, "--eval-context", "64", "--eval-max-tokens", "200", "--jobs", "1")
    assert r.code == 0, r.err
    assert [(rt, Path(p).name) for rt, p in RUNS] == [("mlx-lm", "source-8bit"), ("mlx-lm", "google-main"), ("mlx-lm", "google-e2b")]
    assert json.loads((out / "source-8bit" / "config.json").read_text())["quantization"]["bits"] == 8
    source_logits, tok = mlx_logits(out / "source-8bit")
    windows = windows_by_rule([tok.encode(text.read_text(), add_special_tokens=False)], tok.bos_token_id, 64, 63, 200)
    for name in ("google-main", "google-e2b"):
        (entry,) = json.loads((out / name / "gslice-manifest.json").read_text())["evaluations"]
        ref = reference(windows, source_logits, mlx_logits(out / name)[0], top_k=32)
        assert entry["runtime"] == "mlx-lm 0.32.2 (mlx 0.32.4)" and entry["tokens"] == ref["tokens"] == 200
        assert entry["against"]["perplexity"] == pytest.approx(ref["source_perplexity"], rel=1e-9)
        assert_same(entry, ref)
        assert entry["kl_mean"] > 0 and entry["measured_on"] in (out / name / "README.md").read_text()
    v = cli("verify", out)
    assert v.code == 0 and v.out.count(": ok (") == 3, v.out
