"""`gslice eval` input checks: every one runs before any model does, and ends in one line and
exit 2 - a path that is no model, a runtime that is not installed (naming the extra), bad
windowing, unreadable texts, --record on something gslice did not write."""

from __future__ import annotations

import json
import struct

import pytest

from gslice.evaluation import runners


def gguf_file(path):
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def hf_folder(path, fmt="pt"):
    path.mkdir()
    (path / "config.json").write_text("{}")
    header = json.dumps({"__metadata__": {"format": fmt}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.parametrize("kind,runtime,missing,extra", [
    ("gguf", "llama.cpp", "llama_cpp", "llama-cpp"),
    ("hf", "transformers", "torch, transformers", "transformers"),
    ("mlx", "mlx-lm", "mlx, mlx_lm", "mlx"),
])
def test_a_runtime_that_is_not_installed_names_its_extra(tmp_path, cli, installed, kind, runtime, missing, extra):
    installed()
    model = {"gguf": lambda p: gguf_file(p.with_suffix(".gguf")), "hf": hf_folder, "mlx": lambda p: hf_folder(p, "mlx")}[kind](tmp_path / "m")
    assert runners.runtime_of(model) == runtime
    r = cli("eval", model, "--against", model)
    assert r.code == 2 and r.out == ""
    assert r.err == f"error: {model} runs in {runtime}, which is not installed ({missing} missing): pip install 'gslice[{extra}]'\n"


def test_a_gslice_output_written_for_mlx_runs_in_mlx_lm(tmp_path):
    """Whatever its safetensors header says: gslice's manifest names the format it was written for."""
    folder = hf_folder(tmp_path / "m")
    assert runners.runtime_of(folder) == "transformers"
    (folder / "gslice-manifest.json").write_text(json.dumps({"output_format": {"name": "mlx", "bits": 4}}))
    assert runners.runtime_of(folder) == "mlx-lm"
    (folder / "gslice-manifest.json").write_text(json.dumps({"output_format": {"name": "safetensors"}}))
    assert runners.runtime_of(folder) == "transformers"


def test_the_slice_runtime_is_checked_too(tmp_path, cli, installed):
    installed("llama_cpp")
    src, other = gguf_file(tmp_path / "src.gguf"), hf_folder(tmp_path / "hf")
    r = cli("eval", other, "--against", src)
    assert r.code == 2 and r.err.startswith(f"error: {other} runs in transformers, which is not installed")


@pytest.mark.parametrize("make,message", [
    (lambda p: (p.write_text("hello"), p)[1], "{p} is a file but not a GGUF model (it does not start with 'GGUF'); give a GGUF file or a model folder"),
    (lambda p: (p.mkdir(), p)[1], "{p} has no config.json: not a Hugging Face or MLX model folder"),
    (lambda p: p, "{p} does not exist"),
])
def test_a_path_that_is_no_model(tmp_path, cli, make, message):
    p = make(tmp_path / "thing")
    r = cli("eval", p, "--against", p)
    assert (r.code, r.err) == (2, "error: " + message.format(p=p) + "\n")


@pytest.mark.parametrize("args,message", [
    (["--stride", "512"], "error: --stride 512: must be between 1 and context - 1 = 511 (no token may be skipped)"),
    (["--context", "64", "--stride", "64"], "error: --stride 64: must be between 1 and context - 1 = 63 (no token may be skipped)"),
    (["--text", "nowhere.txt"], "error: --text nowhere.txt: no such file or folder"),
    (["--context", "1"], "Error: Invalid value for '--context': 1 is out of range: it must be at least 2"),
    (["--max-tokens", "0"], "Error: Invalid value for '--max-tokens': 0 is out of range: it must be at least 1"),
    (["--top-k", "5000"], "Error: Invalid value for '--top-k': 5000 is out of range: it must be from 1 to 4096"),
    (["--context", "٥١٢"], "Error: Invalid value for '--context': '٥١٢' is not an integer (ASCII digits only)"),
])
def test_bad_settings_are_refused_before_any_model_is_looked_at(tmp_path, cli, args, message):
    r = cli("eval", tmp_path / "absent", "--against", tmp_path / "absent", *args)
    assert r.code == 2 and r.err.splitlines()[-1] == message


@pytest.mark.parametrize("kw,message", [
    (dict(context=1), "context = 1 is out of range: it must be at least 2"),
    (dict(context=512.0), "context must be an integer, not float 512.0"),
    (dict(top_k=0), "top_k = 0 is out of range: it must be from 1 to 4096"),
    (dict(threads=0), "threads = 0 is out of range: it must be from 1 to 256"),
    (dict(texts=[b"x.txt"]), "texts must be a path (str or os.PathLike), not bytes b'x.txt'"),
    (dict(use_cache="yes"), "use_cache must be True or False, not str 'yes'"),
])
def test_api_settings_are_checked_with_one_line_naming_the_argument(kw, message):
    from gslice import ArgumentError, EvalSettings

    with pytest.raises(ArgumentError) as e:
        EvalSettings(**kw).checked()
    assert str(e.value) == message


def test_a_text_that_is_not_utf8(tmp_path, cli):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    r = cli("eval", tmp_path, "--against", tmp_path, "--text", bad)
    assert (r.code, r.err) == (2, f"error: {bad} is not UTF-8 text (byte 3): give text files\n")


def test_record_refuses_what_gslice_did_not_write(tmp_path, cli, installed):
    installed("llama_cpp", "torch", "transformers")
    model, src = hf_folder(tmp_path / "theirs"), gguf_file(tmp_path / "src.gguf")
    r = cli("eval", model, "--against", src, "--record")
    assert r.code == 2
    assert r.err == f"error: --record: {model} has no gslice-manifest.json: gslice records results only into outputs it wrote\n"
    single = gguf_file(tmp_path / "slice.gguf")
    r = cli("eval", single, "--against", src, "--record")
    assert (r.code, r.err) == (2, f"error: --record: {single} cannot be read as a GGUF file: Sorry, file appears to be version 0 which "
                                  "we cannot handle; gslice records results only into outputs it wrote\n")


def test_bulk_eval_checks_everything_before_writing_anything(e4b, tmp_path, cli, installed):
    out = tmp_path / "out"
    r = cli("bulk", e4b, "--presets", "google-e2b", "-o", out, "--eval", tmp_path / "nowhere.txt")
    assert (r.code, r.err) == (2, f"error: --eval {tmp_path / 'nowhere.txt'}: no such file or folder\n")
    installed()  # no runtime at all
    r = cli("bulk", e4b, "--presets", "google-e2b", "-o", out, "--eval", "sample")
    assert (r.code, r.err) == (2, f"error: {e4b} runs in transformers, which is not installed (torch, transformers missing): pip install 'gslice[transformers]'\n")
    assert not out.exists()


def test_api_model_arguments_are_checked(tmp_path):
    from gslice import ArgumentError, evaluate

    with pytest.raises(ArgumentError, match="^slices must be a list of paths, not str 'a.gguf'$"):
        evaluate("a.gguf", "b.gguf")
    with pytest.raises(ArgumentError, match="^against must be a path"):
        evaluate(["a.gguf"], None)
