"""`recommend`: the largest preset whose RAM estimate fits, and the next larger one with the
excess. Expected choices are derived in the test from independent arithmetic on the layout."""

from __future__ import annotations

import json
import re

import pytest

import gslice
from gslice.units import parse_size

from shape_arithmetic import independent_counts

SHARED_KV_PARAMS = 512 * 2048 * 2 + 256  # k_proj, v_proj, k_norm stored by a KV-sharing layer
PER_TOKEN = 2 * 2 * 256 * 2  # K and V x 2 KV heads x head_dim 256 x bf16


def text_bf16_ram(preset, context: int) -> int:
    """RAM of a text-only bf16 slice: 2 bytes per text parameter, minus the KV projections
    transformers never loads, plus the K/V cache of the layers before the sharing region."""
    kept = [i for i in range(35) if i not in preset.layers_to_skip]
    text = independent_counts(kept, list(preset.ffn_dims), audio=False, vision=False)[2]
    sharing = [i for i in kept if i >= 20]
    own_kv = [i for i in kept if i < 20]
    tokens = sum(context if (i + 1) % 5 == 0 else min(context, 512) for i in own_kv)
    return 2 * text - 2 * SHARED_KV_PARAMS * len(sharing) + tokens * PER_TOKEN


def llama_cpp_safe(preset) -> bool:
    """By hand from llama.cpp's fixed values (KV sharing from layer 20 with producers 18/19,
    sparsity on layers 0-9, one FFN width): on E4B, layers 0-19 kept and one width."""
    return not any(i < 20 for i in preset.layers_to_skip) and len(set(preset.ffn_dims)) == 1


def expected_choice(budget: int, context: int, allowed=lambda p: True):
    ranked = sorted(filter(allowed, gslice.presets()), key=lambda p: (-p.params.effective, p.id))
    fits = [p for p in ranked if text_bf16_ram(p, context) <= budget]
    if not fits:
        return None, min(ranked, key=lambda p: text_bf16_ram(p, context))
    best = fits[0]
    larger = [p for p in ranked if p.params.effective > best.params.effective]
    return best, (larger[-1] if larger else None)


@pytest.mark.parametrize(
    "ram,context,best,runner_up",
    [
        ("5GB", 4096, "gslice-e0.66b", "gslice-e0.78b"),
        ("6GB", 4096, "gslice-e1.12b", "gslice-e1.15b"),
        ("9GB", 4096, "gslice-e2.29b", "google-e2.49b-block"),
        ("8.5GB", 4096, "gslice-e2.29b", "google-e2.49b-block"),
        ("8.5GB", 32768, "gslice-e1.84b", "google-e2b"),  # a longer context costs the larger one
        ("14GB", 4096, "google-main", None),
    ],
)
def test_recommend_text_bf16(ram, context, best, runner_up):
    rec = gslice.recommend(ram, context=context, modalities="text", quant="bf16")
    want_best, want_runner_up = expected_choice(parse_size(ram), context)
    assert (want_best.id, want_runner_up.id if want_runner_up else None) == (best, runner_up)
    assert rec.best.preset == best
    assert (rec.runner_up.preset if rec.runner_up else None) == runner_up
    assert rec.needed_bytes(rec.best) == text_bf16_ram(want_best, context) <= parse_size(ram)
    if runner_up:
        assert rec.runner_up_excess_bytes == text_bf16_ram(want_runner_up, context) - parse_size(ram) > 0


def test_nothing_fits():
    rec = gslice.recommend("3GB", modalities="text")
    want_best, smallest = expected_choice(3 * 10**9, 4096)
    assert want_best is None and rec.best is None
    assert rec.runner_up.preset == smallest.id == "gslice-e0.51b"
    assert rec.runner_up_excess_bytes == text_bf16_ram(smallest, 4096) - 3 * 10**9


def test_int4_with_ple_on_disk_counts_less():
    # the same budget buys more once the PLE table stays memory-mapped
    in_ram = gslice.recommend("4GB", modalities="text", quant="int4")
    on_disk = gslice.recommend("4GB", modalities="text", quant="int4", ple_on_disk=True)
    assert (in_ram.best.preset, in_ram.runner_up.preset) == ("gslice-e1.12b", "gslice-e1.15b")
    assert (on_disk.best.preset, on_disk.runner_up) == ("google-main", None)
    f = in_ram.best.footprint("int4")
    assert in_ram.needed_bytes(in_ram.best) == f.ram_bytes
    assert on_disk.needed_bytes(on_disk.best) == on_disk.best.footprint("int4").ram_ple_on_disk_bytes


def test_recommend_cli(cli):
    result = cli("recommend", "--ram", "6GB", "--modalities", "text")
    assert result.code == 0, result.err
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.out.split("\n\n")[0].splitlines())
    assert rows["best"] == "gslice-e1.12b: 1.12B effective, 15 layers"
    assert rows["runner-up"].startswith("gslice-e1.15b: 1.15B effective, needs ")
    assert "gslice slice gemma-3n-E4B-it/ --preset gslice-e1.12b --text-only -o OUT/" in result.out
    data = json.loads(cli("recommend", "--ram", "6GB", "--modalities", "text", "--json").out)
    assert (data["best"]["preset"], data["runner_up"]["preset"]) == ("gslice-e1.12b", "gslice-e1.15b")


@pytest.mark.parametrize(
    "ram,best,runner_up",
    [
        ("6GB", "gslice-e0.78b", "gslice-e0.96b"),
        ("9GB", "gslice-e2.29b", "google-main"),
        ("14GB", "google-main", None),
    ],
)
def test_recommend_for_llama_cpp(ram, best, runner_up):
    """Only presets llama.cpp computes correctly; the choice derived with the hand-written rule."""
    rec = gslice.recommend(ram, modalities="text", runtime="llama.cpp")
    want_best, want_runner_up = expected_choice(parse_size(ram), 4096, llama_cpp_safe)
    assert (want_best.id, want_runner_up.id if want_runner_up else None) == (best, runner_up)
    assert (rec.best.preset, rec.runner_up.preset if rec.runner_up else None) == (best, runner_up)
    assert [p.preset for p in rec.candidates] == [p.id for p in sorted(
        filter(llama_cpp_safe, gslice.presets()), key=lambda p: (-p.params.effective, p.id))]
    assert rec.to_dict()["runtime"] == "llama.cpp"


def test_recommend_runtime_cli(cli):
    result = cli("recommend", "--ram", "6GB", "--modalities", "text", "--runtime", "llama.cpp")
    assert result.code == 0, result.err
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.out.split("\n\n")[0].splitlines())
    assert rows["best"] == "gslice-e0.78b: 775.4M effective, 20 layers"
    assert rows["runtimes"] == "computed correctly by: all (only the 8 presets llama.cpp computes correctly were considered)"
    result = cli("recommend", "--ram", "2GB", "--modalities", "text", "--runtime", "llama.cpp")
    rec = gslice.recommend("2GB", modalities="text", runtime="llama.cpp")
    from gslice.units import fmt_bytes

    need = rec.needed_bytes(rec.runner_up)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "error: no preset fits --ram 2.00 GB (text, bf16, context 4096, runtime llama.cpp): the smallest that "
        f"llama.cpp computes correctly, gslice-e0.52b, needs {fmt_bytes(need)} ({fmt_bytes(need - 2 * 10**9)} more)\n"
    )
    result = cli("recommend", "--ram", "6GB", "--runtime", "ollama.cpp")
    assert result.code == 2 and "Invalid value for '--runtime': 'ollama.cpp' is not one of" in result.err


def test_recommend_cli_nothing_fits(cli):
    result = cli("recommend", "--ram", "3GB", "--modalities", "text")
    rec = gslice.recommend("3GB", modalities="text")
    from gslice.units import fmt_bytes

    need = rec.needed_bytes(rec.runner_up)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"error: no preset fits --ram 3.00 GB (text, bf16, context 4096): the smallest, gslice-e0.51b, needs "
        f"{fmt_bytes(need)} ({fmt_bytes(need - 3 * 10**9)} more)\n"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ram", "4 apples"], "--ram: '4 apples' is not a size (examples: 5GB, 512MiB, 1000000)"),
        (["--ram", "0GB"], "--ram: '0GB' must be positive"),
    ],
)
def test_recommend_bad_budget(cli, args, message):
    result = cli("recommend", *args)
    assert (result.code, result.out, result.err) == (2, "", f"error: {message}\n")
