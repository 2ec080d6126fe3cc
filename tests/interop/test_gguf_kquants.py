"""gslice's quantized GGUF files are llama.cpp's own: for a tiny model (llama.cpp's fixed sizes,
hidden 64: every K-quant falls back) and a mid-size one (hidden 2048, FFN 2304 sliced to 2080,
so that rows of 2048 take the K-quants and ffn_down's rows of 2080 their fallbacks), each file
type gslice writes in one pass from the BF16 source - q4_k_m, q5_k_m, q6_k, the pure q4_k and
q5_k, and q4_0, also with an importance matrix - is compared with what llama.cpp's quantizer
(``llama_model_quantize`` of llama-cpp-python 0.3.36, as llama-quantize calls it) writes from
gslice's own BF16 GGUF of the same slice:

* every tensor: the same name, GGML type, shape and bytes;
* every metadata value (but the file's name and gslice's manifest, which llama-quantize copies
  from its input);
* llama.cpp loads both files and computes identical logits.

From gslice's f32 file instead, llama.cpp's quantizer makes the same quantized tensors (it
reads the same values); what it leaves alone stays f32 there.

The importance matrix is a GGUF file as llama-imatrix writes it, made from known values with
the gguf package's writer (llama.cpp's imatrix tool is not part of llama-cpp-python); gslice
reads it for the source model, llama.cpp's quantizer gets the entries the slice needs
(renumbered, ffn_down cut to the slice's width) as llama-quantize would load them."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest

import gslice
from gslice.testing import TinyGemma3n, write_sentencepiece, write_tiny_checkpoint

from imatrix_files import entry_widths, for_slice, loaded, random_entries, write_gguf

from . import llama_run
from .gguf_fields import assert_same_values, metadata
from .llama_quantize import quantize

pytestmark = pytest.mark.interop

# model -> (source, slice, the slice's kept layers, its FFN width)
TINY = TinyGemma3n(num_layers=25, num_kv_shared=5, hidden=64, ffn=128, ple_dim=256, heads=2, kv_heads=1, head_dim=32,
                   vocab=320, vocab_per_layer=300, laurel_rank=64, audio=False, vision=False)
# 10 layers, none sharing KV, all sparse: llama.cpp computes any skip of it correctly
MID = TinyGemma3n(num_layers=10, num_kv_shared=0, hidden=2048, ffn=2304, ple_dim=256, heads=2, kv_heads=1, head_dim=256,
                  vocab=320, vocab_per_layer=300, laurel_rank=64, audio=False, vision=False)
MODELS = {
    "tiny": (TINY, {"layers_to_skip": [21, 23]}, [i for i in range(25) if i not in (21, 23)], 128),
    "mid": (MID, {"layers_to_skip": [2, 5], "ffn_dims": 2080}, [0, 1, 3, 4, 6, 7, 8, 9], 2080),
}
TYPES = ("q4_k_m", "q5_k_m", "q6_k", "q4_k", "q5_k")
CASES = [(m, t, False) for m in MODELS for t in TYPES]
CASES += [("tiny", t, True) for t in ("q4_k_m", "q5_k_m", "q4_0")] + [("mid", t, True) for t in ("q4_k_m", "q4_0")]
# The mid-size file's types, written out: rows of 2048 (and proj's 256) take the base type,
# ffn_down's 2080 its fallback (Q6_K's: Q8_0, in the layers use_more_bits picks); the
# embedding tables Q6_K; norms f32; AltUp, LAuReL and the PLE projection as the bf16 file has them.
MID_TYPES = {
    "q4_k_m": {"F32", "BF16", "Q4_K", "Q6_K", "Q5_0", "Q8_0"},
    "q5_k_m": {"F32", "BF16", "Q5_K", "Q6_K", "Q5_1", "Q8_0"},
    "q6_k": {"F32", "BF16", "Q6_K", "Q8_0"},
    "q4_k": {"F32", "BF16", "Q4_K", "Q5_0"},
    "q5_k": {"F32", "BF16", "Q5_K", "Q5_1"},
    "q4_0": {"F32", "BF16", "Q4_0", "Q4_1", "Q6_K"},
}
PROMPT = [2, 17, 45, 101, 7, 230, 12, 64]


class Model:
    def __init__(self, root: Path, name: str):
        shape, self.spec, self.kept, self.ffn = MODELS[name]
        self.name = name
        self.root = root
        self.src = write_tiny_checkpoint(root / f"src-{name}", shape, shards=2)
        assert write_sentencepiece(self.src, 300) == 300
        self.bf16 = root / f"{name}-bf16.gguf"
        gslice.slice_model(self.src, self.bf16, format=gslice.GGUF("bf16"), **self.spec)
        heads_x_dim = shape.heads * shape.head_dim
        self.entries = random_entries(entry_widths(shape.num_layers, shape.hidden, shape.widths()[0], heads_x_dim))
        self.imatrix = write_gguf(root / "imatrix.gguf", self.entries)

    def ours(self, file_type: str, imatrix: bool) -> Path:
        out = self.root / f"{self.name}-{file_type}{'-imatrix' if imatrix else ''}.gguf"
        if out.exists():
            return out
        started = time.perf_counter()
        gslice.slice_model(self.src, out, format=gslice.GGUF(file_type, imatrix=self.imatrix if imatrix else None), **self.spec)
        print(f"gslice: {out.name} in {time.perf_counter() - started:.2f} s")
        return out

    def theirs(self, file_type: str, imatrix: bool) -> Path:
        out = self.root / f"{self.name}-{file_type}{'-imatrix' if imatrix else ''}-llama.gguf"
        started = time.perf_counter()
        if imatrix:
            keys = {"quantize.imatrix.file": self.imatrix.name, "quantize.imatrix.dataset": "wiki.train.raw",
                    "quantize.imatrix.entries_count": len(self.entries), "quantize.imatrix.chunks_count": 100}
            quantize(self.bf16, out, file_type, imatrix=for_slice(loaded(self.entries), self.kept, self.ffn), keys=keys)
        else:
            quantize(self.bf16, out, file_type)
        print(f"llama.cpp's quantizer (from the bf16 file): {out.name} in {time.perf_counter() - started:.2f} s")
        return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Model]:
    return {name: Model(tmp_path_factory.mktemp(name), name) for name in MODELS}


@pytest.mark.parametrize("name,file_type,imatrix", CASES, ids=[f"{m}-{t}{'-imatrix' if i else ''}" for m, t, i in CASES])
def test_every_tensor_and_value_is_llama_cpps_and_so_are_the_logits(models, name, file_type, imatrix):
    model = models[name]
    ours_path, theirs_path = model.ours(file_type, imatrix), model.theirs(file_type, imatrix)
    ours, theirs = gguf.GGUFReader(ours_path), gguf.GGUFReader(theirs_path)
    a, b = (metadata(r, skip=("general.name", "gslice.manifest")) for r in (ours, theirs))
    assert sorted(a) == sorted(b)
    assert_same_values(a, b)
    assert b["general.file_type"] == {"q4_k_m": 15, "q4_k": 15, "q5_k_m": 17, "q5_k": 17, "q6_k": 18, "q4_0": 2}[file_type]
    theirs_by_name = {t.name: t for t in theirs.tensors}
    assert sorted(theirs_by_name) == sorted(t.name for t in ours.tensors)
    for t in ours.tensors:
        u = theirs_by_name[t.name]
        assert (t.tensor_type.name, list(t.shape)) == (u.tensor_type.name, list(u.shape)), t.name
        assert t.data.tobytes() == u.data.tobytes(), f"{t.name} ({t.tensor_type.name}): bytes differ"
    if name == "mid":
        assert {t.tensor_type.name for t in ours.tensors} == MID_TYPES[file_type]
    x, y = llama_run.logits(ours_path, PROMPT), llama_run.logits(theirs_path, PROMPT)
    assert np.isfinite(x).all() and x.std() > 0
    assert np.array_equal(x, y)


def test_the_importance_matrix_changes_the_file(models):
    # Control: the matrix reaches llama.cpp's quantizer and gslice's alike, and changes blocks.
    model = models["mid"]
    plain = {t.name: t.data.tobytes() for t in gguf.GGUFReader(model.ours("q4_k_m", False)).tensors}
    weighted = {t.name: t.data.tobytes() for t in gguf.GGUFReader(model.ours("q4_k_m", True)).tensors}
    changed = sorted(n for n in plain if plain[n] != weighted[n])
    assert "blk.1.attn_q.weight" in changed and "blk.1.ffn_down.weight" in changed  # Q4_K and Q5_0 (fallback)
    assert "per_layer_token_embd.weight" not in changed  # no entry: llama-imatrix never sees it multiplied



def test_from_the_f32_file_the_quantized_tensors_are_the_same(models):
    # llama.cpp's quantizer reads its input's values: the f32 file of a bf16 source holds the
    # same values, so every tensor it quantizes is the same; what it leaves alone keeps the
    # input's type (f32 here, bf16 in gslice's file, which is the bf16 file's)
    model = models["mid"]
    f32 = model.root / "mid-f32.gguf"
    gslice.slice_model(model.src, f32, format=gslice.GGUF("f32"), **model.spec)
    theirs_path = model.root / "mid-q4_k_m-from-f32-llama.gguf"
    quantize(f32, theirs_path, "q4_k_m")
    ours = {t.name: t for t in gguf.GGUFReader(model.ours("q4_k_m", False)).tensors}
    kept = []
    for u in gguf.GGUFReader(theirs_path).tensors:
        t = ours[u.name]
        if u.tensor_type.name == "F32" and t.tensor_type.name == "BF16":
            kept.append(u.name)
            values = (np.frombuffer(t.data.tobytes(), np.uint16).astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(values, np.frombuffer(u.data.tobytes(), np.float32)), u.name
        else:
            assert (u.tensor_type, u.data.tobytes()) == (t.tensor_type, t.data.tobytes()), u.name
    assert {n.split(".")[-2] for n in kept} == {"altup_proj", "altup_unembd_proj", "per_layer_model_proj", "altup_router",
                                                "laurel_l", "laurel_r"}
