"""gslice's GGUF files in llama.cpp itself (llama-cpp-python 0.3.36, built from its sdist).

For four slices llama.cpp computes correctly (none; layers skipped within the KV-sharing region;
one narrower FFN width; an E2B-shaped source, 30 layers with the last 10 sharing):

* llama.cpp's logits of gslice's file equal transformers' logits of the same slice made on the
  modules (never through a checkpoint): for a quantized file, transformers runs the file's
  weights as the gguf package dequantizes them. transformers is run with llama.cpp's roundings
  (``llama_numerics``): what remains is summation order, rounding boundaries that it flips, and,
  for q8_0/q4_0/bf16 files, llama.cpp's rounding of the activations. Tolerances below, on logits
  whose standard deviation is about 2 (the final soft cap is 30);
* greedy decoding agrees: at every step llama.cpp's token is transformers' argmax on the same
  prefix, or within the tolerance of it (a near tie);
* the file is llama.cpp's own: byte for byte the tensors, and every metadata value, that
  llama.cpp's converter (convert_hf_to_gguf.py from the same sdist) writes for the module-level
  slice saved by transformers, and for q4_0 what llama.cpp's quantizer makes of the converter's
  default (bf16) output;
* llama.cpp tokenizes text as the SentencePiece model does ("\\n" included).

A control shows the guard protects against something real: a slice it refuses (layers 10-14
skipped), written with the guard bypassed, loads in llama.cpp and computes logits far outside
the tolerance.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import gslice
from gslice.formats import gguf as gguf_format

from . import llama_run
from .gguf_fields import assert_same_values, metadata
from .gguf_in_transformers import llama_numerics, load_gguf_weights
from .tiny_gemma3n import module_slice
from .tiny_text_models import TEXT, build, greedy, llama_cpp_source, logits, prompt_ids, save

pytestmark = pytest.mark.interop

CASES = {
    "none": (25, 5, {}),
    "skip-21-23": (25, 5, {"layers_to_skip": [21, 23]}),
    "width-64": (25, 5, {"ffn_dims": 64}),
    "e2b-shaped": (30, 10, {}),
}
TYPES = ("f32", "bf16", "q8_0", "q4_0")
# max |llama.cpp logit - transformers logit| over the four slices (measured with transformers
# 5.23.0, and the same with 5.24.0: f32 0.0016-0.0029, bf16 0.095-0.115, q8_0 0.22-0.28,
# q4_0 0.19-0.31; the guard-bypassed control: 2.43) and the share of prompt positions whose
# argmax agrees (measured: f32 1.0, the others 0.93-1.0).
TOLERANCE = {"f32": 0.01, "bf16": 0.3, "q8_0": 0.8, "q4_0": 0.8}
ARGMAX = {"f32": 1.0, "bf16": 0.9, "q8_0": 0.9, "q4_0": 0.9}
NEW_TOKENS = 8


class Case:
    def __init__(self, root: Path, name: str):
        layers, shared, spec = CASES[name]
        self.spec = spec
        self.model = build(layers, shared)
        self.src = save(self.model, root / f"src-{name}")
        self.ids = prompt_ids(self.src)
        self.oracle = module_slice(self.model, spec.get("layers_to_skip", ()), spec.get("ffn_dims"))
        self.root = root
        self.name = name

    def write(self, file_type: str) -> Path:
        out = self.root / f"{self.name}-{file_type}.gguf"
        if not out.exists():
            gslice.slice_model(self.src, out, format=gslice.GGUF(file_type), **self.spec)
        return out

    def transformers_like_llama(self, path: Path):
        model = copy.deepcopy(self.oracle)
        assert load_gguf_weights(model, path) == []
        return llama_numerics(model, path)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("gguf-llama")
    return {name: Case(root, name) for name in CASES}


def check_greedy(path: Path, model, ids: list[int], tolerance: float) -> list[int]:
    """llama.cpp's greedy tokens, each checked against transformers' logits on the same prefix."""
    tokens = llama_run.greedy(path, ids, NEW_TOKENS)
    rows = logits(model, tokens)
    for k in range(len(ids) - 1, len(tokens) - 1):
        row, chosen = rows[k], tokens[k + 1]
        assert row.max() - row[chosen] <= tolerance, (
            f"step {k - len(ids) + 1}: llama.cpp chose {chosen}, transformers' argmax is {int(row.argmax())} "
            f"by {row.max() - row[chosen]:.4f}"
        )
    return tokens


@pytest.mark.parametrize("file_type", TYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_llama_cpp_computes_what_transformers_computes(cases, name, file_type):
    case = cases[name]
    path = case.write(file_type)
    ours = llama_run.logits(path, case.ids)
    theirs = logits(case.transformers_like_llama(path), case.ids)
    diff = float(np.abs(ours - theirs).max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"{name} {file_type}: max |dlogit| {diff:.5f}, argmax agreement {agree:.3f}")
    assert diff <= TOLERANCE[file_type]
    assert agree >= ARGMAX[file_type]
    tokens = check_greedy(path, case.transformers_like_llama(path), case.ids, TOLERANCE[file_type])
    if file_type == "f32":  # and transformers' own greedy decoding, with its KV cache
        assert greedy(case.transformers_like_llama(path), case.ids, NEW_TOKENS)[: len(case.ids) + 4] == tokens[: len(case.ids) + 4]


def test_transformers_own_numerics_stay_close_on_f32(cases):
    """Without imitating llama.cpp's roundings (n - 1 in the sparsity deviation, the f16 GELU
    table): the difference that is llama.cpp's implementation, not gslice's file."""
    case = cases["none"]
    path = case.write("f32")
    diff = float(np.abs(llama_run.logits(path, case.ids) - logits(case.oracle, case.ids)).max())
    print(f"f32 against transformers' own numerics: max |dlogit| {diff:.4f}")
    assert diff <= 0.2


def test_the_guard_protects_against_wrong_logits(cases, tmp_path, monkeypatch):
    case = cases["none"]
    spec = {"layers_to_skip": [10, 11, 12, 13, 14]}
    with pytest.raises(gslice.SpecError, match=r"^--format gguf: llama\.cpp loads it and computes wrong logits without an error \(kv-sharing-start\)"):
        gslice.slice_model(case.src, tmp_path / "refused.gguf", format=gslice.GGUF("f32"), **spec)
    monkeypatch.setattr(gguf_format, "guard", lambda plan: None)  # this test only: write it anyway
    path = tmp_path / "wrong.gguf"
    gslice.slice_model(case.src, path, format=gslice.GGUF("f32"), **spec)
    oracle = module_slice(case.model, spec["layers_to_skip"])
    ours = llama_run.logits(path, case.ids)
    theirs = logits(llama_numerics(oracle, path), case.ids)
    diff = float(np.abs(ours - theirs).max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"guard bypassed (layers 10-14 skipped): max |dlogit| {diff:.3f}, argmax agreement {agree:.3f}")
    assert diff > 50 * TOLERANCE["f32"] and agree < 0.8


def test_llama_cpp_tokenizes_as_sentencepiece_does(cases):
    case = cases["none"]
    assert llama_run.tokenize(case.write("f32"), TEXT) == case.ids


# -- the file llama.cpp's own tools write -------------------------------------------------


def convert(case: Case, file_type: str, tmp: Path) -> Path:
    """llama.cpp's converter run on the module-level slice, saved as published checkpoints are."""
    folder = tmp / f"module-slice-{case.name}"
    if not folder.exists():
        save(case.oracle, folder)
    out = tmp / f"converted-{case.name}-{file_type}.gguf"
    if file_type == "q4_0":
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = 2
        bf16 = convert(case, "bf16", tmp)
        assert llama_cpp.llama_model_quantize(str(bf16).encode(), str(out).encode(), ctypes.byref(params)) == 0
        return out
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    subprocess.run([sys.executable, str(script), str(folder), "--outfile", str(out), "--outtype", file_type],
                   check=True, capture_output=True)
    return out


@pytest.mark.parametrize("file_type", ("f32", "bf16", "f16", "q8_0", "q4_0"))
@pytest.mark.parametrize("name", ["skip-21-23", "width-64"])
def test_the_file_is_what_llama_cpp_writes_for_the_module_slice(cases, tmp_path_factory, name, file_type):
    case = cases[name]
    ours = gguf.GGUFReader(case.write(file_type))
    theirs = gguf.GGUFReader(convert(case, file_type, tmp_path_factory.getbasetemp()))
    # The converter derives a name, basename, version and finetune from the folder's name
    # ("module-slice-width-64"); gslice names the file by its own name (and adds no others).
    named = {"general.name", "general.basename", "general.version", "general.finetune"}
    a, b = metadata(ours, skip=named), metadata(theirs, skip=named)
    # what gslice adds: its manifest, the license and tags
    assert sorted(set(a) - set(b)) == ["general.license", "general.tags", "gslice.manifest"]
    assert sorted(set(b) - set(a)) == []
    assert_same_values(a, b)
    assert [t.name for t in sorted(ours.tensors, key=lambda t: t.name)] == [t.name for t in sorted(theirs.tensors, key=lambda t: t.name)]
    by_name = {t.name: t for t in theirs.tensors}
    for t in ours.tensors:
        u = by_name[t.name]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), t.name
        assert t.data.tobytes() == u.data.tobytes(), t.name
