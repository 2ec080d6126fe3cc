"""--imatrix: an importance matrix of the source model (both formats of llama.cpp's imatrix tool,
written here with each format's own writer from known values) reaches every tensor the
quantizer changes under the slice's names: layer kept[i]'s entry for layer i, ffn_down's cut to
the slice's width, skipped layers' entries never read. Each such tensor's blocks are compared
with the engine's kernel given the weights this test derives itself (the kernels themselves
are checked against llama.cpp's in the interop tier, which also checks whole files against
llama_model_quantize given the same weights). Then the metadata llama-quantize adds, the
report, verify, and the refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

import gslice
from gslice import _core
from gslice.testing import LLAMA_LIKE, write_sentencepiece, write_tiny_checkpoint

from conftest import hidden_leftovers
from imatrix_files import entry_widths, for_slice, loaded, random_entries, write_dat, write_gguf
from test_gguf import expected_arrays

SKIP = [21, 23]
KEPT = [i for i in range(25) if i not in SKIP]
FFN = 64  # of the source's 128
USES_IMATRIX = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    src = write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "llama", LLAMA_LIKE, shards=2)
    assert write_sentencepiece(src, 300) == 300
    return src


@pytest.fixture(scope="module")
def entries() -> dict:
    return random_entries(entry_widths(25, hidden=64, ffn=128, heads_x_dim=64))


@pytest.fixture(scope="module")
def arrays(src) -> dict[str, np.ndarray]:
    return expected_arrays(src, SKIP, [FFN] * 23)


def blocks(ggml: str, a: np.ndarray, weights: np.ndarray | None) -> bytes:
    a = a.reshape(-1, a.shape[-1]).astype(np.float32)
    return _core.ggml_quantize(ggml.lower(), a.tobytes(), "F32", a.shape[-1], None if weights is None else weights.tobytes())


@pytest.mark.parametrize("kind", ["gguf", "dat"])
@pytest.mark.parametrize("file_type", ["q4_k_m", "q4_0", "q5_k"])
def test_the_weights_reach_each_tensor_under_the_slices_names(src, entries, arrays, tmp_path, file_type, kind):
    path = (write_gguf if kind == "gguf" else write_dat)(tmp_path / f"imatrix.{kind}", entries)
    out = tmp_path / "m.gguf"
    report = gslice.slice_model(src, out, layers_to_skip=SKIP, ffn_dims=FFN, format=gslice.GGUF(file_type, imatrix=path))
    weights = for_slice(loaded(entries, legacy=kind == "dat"), KEPT, FFN)
    plain = gguf.GGUFReader(gslice_without(src, tmp_path, file_type))
    plain_data = {t.name: t.data.tobytes() for t in plain.tensors}
    reader = gguf.GGUFReader(out)
    used = 0
    for t in reader.tensors:
        ggml = t.tensor_type.name
        w = weights.get(t.name) if ggml in USES_IMATRIX else None
        if ggml not in USES_IMATRIX:
            assert t.data.tobytes() == plain_data[t.name], t.name
            continue
        assert t.data.tobytes() == blocks(ggml, arrays[t.name], w), t.name
        used += w is not None
    # the 9 quantized matrices of each of the 23 layers have an entry (LAuReL and AltUp are not
    # quantized) and the token table has one; per_layer_token_embd has none. Q8_0 reads no
    # importance matrix: q4_k_m stores attn_v and ffn_down of 11 layers as Q8_0 (Q6_K falling
    # back) and the token table as Q8_0; q5_k (pure) stores the token table as Q5_1.
    assert used == {"q4_k_m": 23 * 9 - 2 * 11, "q4_0": 23 * 9, "q5_k": 23 * 9 + 1}[file_type]
    assert report.format["imatrix"] == {"file": path.name, "entries": len(entries), "tensors_with": used,
                                        "tensors_without": ["per_layer_token_embd.weight"]}
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert {k: v for k, v in fields.items() if k.startswith("quantize.")} == {
        "quantize.imatrix.file": path.name, "quantize.imatrix.dataset": "wiki.train.raw",
        "quantize.imatrix.entries_count": 25 * 12 + 1, "quantize.imatrix.chunks_count": 100,
    }
    if file_type == "q4_0":  # llama.cpp's guard for the first layers' ffn_down, with an imatrix only
        down = [t.tensor_type.name for t in sorted(reader.tensors, key=lambda t: t.name) if t.name.endswith("ffn_down.weight")]
        assert sorted(down) == ["Q4_0"] * 21 + ["Q4_1"] * 2
        assert {t.name for t in reader.tensors if t.tensor_type.name == "Q4_1"} == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}


def gslice_without(src: Path, tmp_path: Path, file_type: str) -> Path:
    out = tmp_path / "plain.gguf"
    gslice.slice_model(src, out, layers_to_skip=SKIP, ffn_dims=FFN, format=gslice.GGUF(file_type))
    return out


def test_the_weights_change_the_blocks(src, entries, tmp_path):
    # Control: with and without the matrix, the quantized layer matrices differ.
    path = write_gguf(tmp_path / "imatrix.gguf", entries)
    with_m, without = tmp_path / "with.gguf", gslice_without(src, tmp_path, "q4_k_m")
    gslice.slice_model(src, with_m, layers_to_skip=SKIP, ffn_dims=FFN, format=gslice.GGUF("q4_k_m", imatrix=path))
    a = {t.name: t.data.tobytes() for t in gguf.GGUFReader(with_m).tensors}
    b = {t.name: t.data.tobytes() for t in gguf.GGUFReader(without).tensors}
    assert a["blk.3.ffn_down.weight"] != b["blk.3.ffn_down.weight"]
    assert a["blk.3.attn_norm.weight"] == b["blk.3.attn_norm.weight"]


def test_verify_rederives_with_the_recorded_matrix(src, entries, tmp_path, cli):
    path = write_gguf(tmp_path / "imatrix.gguf", entries)
    out = tmp_path / "m.gguf"
    result = cli("slice", src, "-o", out, "--format", "gguf", "--gguf-type", "q4_k_m", "--imatrix", path,
                 "--layers-to-skip", "21,23", "--ffn-dims", str(FFN))
    assert result.code == 0, result.err
    assert "\nimatrix       imatrix.gguf (301 entries): 185 tensors quantized with it, 1 without an entry (per_layer_token_embd.weight)\n" in result.out
    manifest = json.loads(gguf.GGUFReader(out).fields["gslice.manifest"].contents())
    assert manifest["output_format"]["imatrix"]["file"] == str(path)
    ok = cli("verify", out, "--against", src)
    assert ok.code == 0 and ok.out.startswith(f"{out}: ok"), ok.out + ok.err
    write_gguf(path, random_entries(entry_widths(25, hidden=64, ffn=128, heads_x_dim=64), seed=1))
    changed = cli("verify", out, "--against", src)
    assert changed.code == 2
    assert changed.err == (f"error: {out}: gslice.manifest: the importance matrix {path} changed since the file was "
                           "written (its sha256 differs)\n")


def with_entry(entries: dict, name: str, sums: np.ndarray) -> dict:
    return {**entries, name: (sums, 10)}


def refusal(cli, src, tmp_path, path, *args):
    out = tmp_path / "m.gguf"
    result = cli("slice", src, "-o", out, "--format", "gguf", "--gguf-type", "q4_k_m", "--imatrix", path,
                 "--layers-to-skip", "21,23", *args)
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    return result.code, result.err


def test_a_matrix_of_another_shape_is_refused(src, entries, tmp_path, cli):
    path = write_gguf(tmp_path / "imatrix.gguf", with_entry(entries, "blk.24.attn_q.weight", np.ones(32, np.float32)))
    # slice layer 22 is source layer 24
    assert refusal(cli, src, tmp_path, path) == (2, (
        "error: --imatrix imatrix.gguf: blk.24.attn_q.weight holds 32 weights, but the source's "
        "model.language_model.layers.24.self_attn.q_proj.weight has 64 columns (an importance matrix of another model?)\n"))


def test_entries_that_are_not_read_do_not_matter(src, entries, tmp_path):
    # a skipped layer's entry and a token table entry of another width (which llama-quantize
    # ignores), and entries of tensors the quantizer leaves alone
    odd = with_entry(entries, "blk.21.attn_q.weight", np.ones(5, np.float32))
    odd = with_entry(odd, "token_embd.weight", np.ones(7, np.float32))
    odd = with_entry(odd, "blk.0.laurel_l.weight", np.ones(9, np.float32))
    path = write_gguf(tmp_path / "imatrix.gguf", odd)
    out = tmp_path / "m.gguf"
    gslice.slice_model(src, out, layers_to_skip=SKIP, format=gslice.GGUF("q4_k_m", imatrix=path))
    assert out.is_file()


@pytest.mark.parametrize("make,message", [
    (lambda p, e: write_gguf(p, with_entry(e, "blk.0.attn_q.weight", np.array([1.0, np.nan] * 32, np.float32))),
     "blk.0.attn_q.weight holds a non-finite weight (nan at 1), which llama.cpp refuses"),
    (lambda p, e: write_gguf(p, e, metadata=False),
     "a GGUF file without imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size: not an importance matrix llama-imatrix wrote"),
    (lambda p, e: p.write_bytes(b"hello world"), "ends inside entry 1's name (neither a GGUF nor a legacy .dat importance matrix)"),
    (lambda p, e: p.write_bytes(b"\0\0\0\0"), "no entries (neither a GGUF nor a legacy .dat importance matrix)"),
])
def test_files_llama_cpp_would_refuse_are_refused(src, entries, tmp_path, cli, make, message):
    path = tmp_path / "imatrix.gguf"
    make(path, entries)
    assert refusal(cli, src, tmp_path, path) == (2, f"error: --imatrix imatrix.gguf: {message}\n")


def test_a_missing_file_is_refused(src, tmp_path, cli):
    path = tmp_path / "nope.gguf"
    assert refusal(cli, src, tmp_path, path) == (2, f"error: --imatrix {path}: cannot be read: No such file or directory\n")
