"""transformers loads every gslice output and computes what the module-level slice computes.

Each case slices a saved tiny model with gslice, loads the output with ``from_pretrained`` and
compares logits on a fixed prompt (fp32, max abs difference <= 1e-5) and a few greedily
generated tokens with the same model sliced in memory by ``module_slice`` (no gslice code).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import gslice

from .conftest import CONTROL_MIN, TOLERANCE
from .tiny_gemma3n import greedy, load_with_info, logits, max_abs_diff, module_slice, text_model

pytestmark = pytest.mark.interop


@dataclass(frozen=True)
class Case:
    id: str
    source: str  # fixture name
    layers_to_skip: tuple[int, ...] = ()
    ffn_dims: int | tuple[int, ...] | None = None
    via_cli: bool = False


# Tiny E4B-like source: 20 layers, sliding except every fifth (4, 9, 14, 19 full), layers 10-19
# reuse the K/V of 8 (sliding) and 9 (full), FFN 64 ("trained" widths 32 and 64).
CASES = [
    # E4B -> E2B: skip the first 5-block of the KV-sharing region, every FFN at the smaller
    # trained width (the official config skips 20-24 of 35 with FFN 8192 of 16384). Via the CLI.
    Case("e2b_block_skip", "e4b_like", tuple(range(10, 15)), 32, via_cli=True),
    # one layer, not a whole 5-block: every later layer shifts its attention type and its
    # activation sparsity (layer 4, full attention, becomes layer 3)
    Case("single_nonaligned_skip", "e4b_like", (3,)),
    # one width per kept layer: trained ones (64, 32) and widths between and below them
    Case("mixed_widths", "e4b_like", (7,), tuple([64, 32, 48, 40, 56, 24] * 4)[:19]),
    # inside the KV-sharing region: a sliding, the first full and another sliding consumer
    Case("skips_in_kv_region", "e4b_like", (11, 14, 17)),
    Case("widths_only", "e4b_like", (), 32),
    # tiny E2B-like source: 15 layers, layers 10-14 reuse the K/V of 8 and 9, FFN 32
    Case("e2b_source", "e2b_like", (3, 11), 24),
]


def gslice_slice(case: Case, src, out) -> None:
    if not case.via_cli:
        gslice.slice_model(src, out, layers_to_skip=case.layers_to_skip, ffn_dims=case.ffn_dims)
        return
    args = [sys.executable, "-m", "gslice", "slice", str(src), "-o", str(out), "-q"]
    args += ["--layers-to-skip", ",".join(map(str, case.layers_to_skip))]
    args += ["--ffn-dims", ",".join(map(str, case.ffn_dims)) if isinstance(case.ffn_dims, tuple) else str(case.ffn_dims)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def sliced(request, tmp_path_factory):
    """(case, source, transformers' load of gslice's output, the module-level slice)."""
    case: Case = request.param
    src = request.getfixturevalue(case.source)
    out = tmp_path_factory.mktemp(case.id) / "out"
    gslice_slice(case, src.path, out)
    loaded, info = load_with_info(out)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    return case, src, loaded, module_slice(src.model, case.layers_to_skip, case.ffn_dims)


CONFIG_FIELDS = ("num_hidden_layers", "intermediate_size", "layer_types", "activation_sparsity_pattern", "num_kv_shared_layers")


def test_config_describes_the_module_slice(sliced):
    _, _, loaded, oracle = sliced
    got, want = text_model(loaded).config, text_model(oracle).config
    assert {f: getattr(got, f) for f in CONFIG_FIELDS} == {f: getattr(want, f) for f in CONFIG_FIELDS}
    assert got.kv_sharing_modes == want.kv_sharing_modes


def test_logits_match_the_module_slice(sliced, record, control):
    case, src, loaded, oracle = sliced
    got = logits(loaded)
    diff = record(case.id, max_abs_diff(got, logits(oracle)))
    assert diff <= TOLERANCE
    # and the slice is not the source model: the comparison above is able to fail
    assert control(f"unsliced_vs_{case.id}", max_abs_diff(got, logits(src.model))) > CONTROL_MIN


def test_greedy_generation_matches_the_module_slice(sliced):
    _, src, loaded, oracle = sliced
    tokens = greedy(loaded)
    assert torch.equal(tokens, greedy(oracle))
    assert tokens.shape == (1, 12 + 6)


# -- the oracle tells wrong slices apart ----------------------------------------------------


def _wrong_ple_blocks(model, source, kept):
    # the first len(kept) layers' blocks, as if the table had been truncated
    P = text_model(model).hidden_size_per_layer_input
    n = len(kept) * P
    lm, src = text_model(model), text_model(source)
    lm.embed_tokens_per_layer.weight.data = src.embed_tokens_per_layer.weight.data[:, :n].clone()
    lm.per_layer_model_projection.weight.data = src.per_layer_model_projection.weight.data[:n].clone()


def _wrong_sparsity(model, source, kept):
    # the sparsity pattern of the first len(kept) source layers instead of the kept ones
    pattern = text_model(source).config.activation_sparsity_pattern[: len(kept)]
    for layer, s in zip(text_model(model).layers, pattern):
        layer.mlp.activation_sparsity = s


def _trailing_ffn_rows(model, source, kept):
    # the last F' rows/columns instead of the leading (nested) ones
    for layer, old in zip(text_model(model).layers, kept):
        mlp, src = layer.mlp, text_model(source).layers[old].mlp
        width = mlp.intermediate_size
        mlp.gate_proj.weight.data = src.gate_proj.weight.data[-width:].clone()
        mlp.up_proj.weight.data = src.up_proj.weight.data[-width:].clone()
        mlp.down_proj.weight.data = src.down_proj.weight.data[:, -width:].clone()


MUTATIONS = {"ple_blocks": _wrong_ple_blocks, "sparsity": _wrong_sparsity, "ffn_rows": _trailing_ffn_rows}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_wrong_slice_is_told_apart(mutation, e4b_like, tmp_path, control):
    """Each way of getting the slice wrong moves the logits far beyond the tolerance."""
    skip, width = (3,), 32
    kept = [i for i in range(20) if i not in skip]
    gslice.slice_model(e4b_like.path, tmp_path / "out", layers_to_skip=skip, ffn_dims=width)
    loaded, _ = load_with_info(tmp_path / "out")
    wrong = module_slice(e4b_like.model, skip, width)
    MUTATIONS[mutation](wrong, e4b_like.model, kept)
    assert control(f"wrong_{mutation}", max_abs_diff(logits(loaded), logits(wrong))) > CONTROL_MIN


# -- the published layout: sharing layers also store K/V weights ------------------------------


@pytest.fixture(scope="module")
def published_layout(e4b_like, tmp_path_factory):
    """e4b_like with k_proj/v_proj/k_norm for the KV-sharing layers 10-19 as well, as the
    published checkpoints store them (transformers 5.23 neither builds nor saves them)."""
    folder = shutil.copytree(e4b_like.path, tmp_path_factory.mktemp("published") / "src")
    tensors = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(7)
    for i in range(10, 20):
        p = f"model.language_model.layers.{i}.self_attn."
        tensors[p + "k_proj.weight"] = torch.randn(16, 32, generator=gen)
        tensors[p + "v_proj.weight"] = torch.randn(16, 32, generator=gen)
        tensors[p + "k_norm.weight"] = torch.randn(8, generator=gen)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_published_kv_tensors_of_sharing_layers_are_kept_and_ignored(published_layout, e4b_like, tmp_path, record):
    skip = (3, 12)  # one before the sharing region, one inside it
    out = tmp_path / "out"
    gslice.slice_model(published_layout, out, layers_to_skip=skip)
    with safe_open(out / "model.safetensors", "pt") as f:
        layers_with_k = {int(n.split(".")[3]) for n in f.keys() if n.endswith("self_attn.k_proj.weight")}
    assert layers_with_k == set(range(18))  # renumbered with their layers, sharing ones included
    loaded, info = load_with_info(out)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    diff = max_abs_diff(logits(loaded), logits(module_slice(e4b_like.model, skip)))
    assert record("published_kv_layout", diff) <= TOLERANCE
