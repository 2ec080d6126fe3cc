"""The preset catalogue: gslice's presets obey the rules and are named by their computed size,
every preset slices the tiny E4B-shaped checkpoint byte-for-byte, presets map onto other
sources only as documented, names match exactly with a did-you-mean, and each public proposal
gets its exact verdict."""

from __future__ import annotations

import dataclasses
import json

import pytest

import gslice
from gslice import gemma3n
from gslice.catalogue import find_preset
from gslice.testing import TinyGemma3n, compare_to_reference

from conftest import hidden_leftovers
from shape_arithmetic import independent_counts

E4B = gemma3n.architecture(gemma3n.e4b_config())
BLOCKS = [list(range(5 * b, 5 * b + 5)) for b in range(7)]  # E4B: 4 sliding + 1 full, seven times

# (kept 5-layer blocks, width of sliding layers, width of full-attention layers, trained widths only),
# smallest first. The uniform ones keep blocks 0-3 (layers 0-19): llama.cpp computes those.
GSLICE = [
    ((0, 3, 6), 2048, 8192, False),
    ((0, 1, 2, 3), 2048, 2048, False),
    ((0, 3, 6), 4096, 8192, False),
    ((0, 1, 2, 3), 4096, 4096, False),
    ((0, 1, 3, 6), 4096, 8192, False),
    ((0, 1, 2, 3, 6), 4096, 4096, False),
    ((0, 3, 6), 8192, 16384, True),
    ((0, 1, 2, 3, 5, 6), 4096, 4096, False),
    ((0, 1, 3, 6), 8192, 8192, True),
    ((0, 1, 3, 6), 8192, 16384, True),
    ((0, 1, 2, 3, 6), 8192, 8192, True),
    ((0, 1, 2, 3, 6), 8192, 16384, True),
    ((0, 1, 2, 3), 16384, 16384, True),
]
GSLICE_NAMES = [
    "gslice-e0.51b", "gslice-e0.52b", "gslice-e0.66b", "gslice-e0.78b", "gslice-e0.88b", "gslice-e0.96b", "gslice-e1.12b",
    "gslice-e1.15b", "gslice-e1.28b", "gslice-e1.48b", "gslice-e1.59b", "gslice-e1.84b", "gslice-e2.29b",
]


def test_gslice_presets_named_by_computed_size():
    ours = [p for p in gslice.presets() if p.origin == "gslice"]
    assert [p.id for p in ours] == GSLICE_NAMES
    for p, (blocks, sliding, full, trained) in zip(ours, GSLICE):
        kept = [i for b in blocks for i in BLOCKS[b]]
        widths = [full if (i + 1) % 5 == 0 else sliding for i in kept]
        effective, _, total = independent_counts(kept, widths)
        assert p.id == f"gslice-e{effective / 1e9:.2f}b"
        assert (p.params.effective, p.params.total) == (effective, total)
        assert p.layers_to_skip == tuple(i for i in range(35) if i not in kept)
        assert p.ffn_dims == tuple(widths)
        assert p.trained_widths is trained
        assert p.quality == ("unmeasured" if trained else "unmeasured quality (untrained widths)")


def test_gslice_presets_follow_the_rules():
    ours = [p for p in gslice.presets() if p.origin == "gslice"]
    assert len(ours) >= 5
    for p in ours:
        res = gemma3n.resolve(E4B, p.spec_for(E4B))
        assert 0.5e9 <= p.params.effective <= 2.3e9
        assert {18, 19} <= set(res.kept)  # KV producers
        assert all(w % 256 == 0 and w <= 16384 for w in p.ffn_dims)
        kinds = [E4B.layer_types[i] for i in res.kept]
        assert kinds == ["full_attention" if (j + 1) % 5 == 0 else "sliding_attention" for j in range(len(kinds))]
        # full-attention layers get at least the width of the sliding ones
        full = {w for i, w in zip(res.kept, p.ffn_dims) if E4B.layer_types[i] == "full_attention"}
        sliding = {w for i, w in zip(res.kept, p.ffn_dims) if E4B.layer_types[i] != "full_attention"}
        assert min(full) >= max(sliding)


def test_presets_are_frozen():
    p = gslice.presets()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.id = "x"


ALL_IDS = [p.id for p in gslice.presets()]


@pytest.mark.parametrize("preset_id", ALL_IDS)
def test_every_preset_slices_the_tiny_checkpoint(e4b, tmp_path, preset_id):
    preset = find_preset(preset_id)
    out = tmp_path / "out"
    report = gslice.slice_model(e4b, out, preset=preset_id)
    widths = [w * 64 // 16384 for w in preset.ffn_dims]  # the tiny FFN is 64 wide
    assert compare_to_reference(e4b, out, layers_to_skip=preset.layers_to_skip, widths=widths) == []
    text = json.loads((out / "config.json").read_text())["text_config"]
    kept = [i for i in range(35) if i not in preset.layers_to_skip]
    assert text["intermediate_size"] == widths
    assert text["layer_types"] == [E4B.layer_types[i] for i in kept]
    assert text["num_kv_shared_layers"] == sum(1 for i in kept if i >= 20)
    assert report.preset == preset_id


def test_preset_by_cli_text_only(cli, e4b, tmp_path):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--preset", "gslice-e0.51b", "--text-only", "--json")
    assert result.code == 0, result.err
    preset = find_preset("gslice-e0.51b")
    widths = [w * 64 // 16384 for w in preset.ffn_dims]
    assert compare_to_reference(e4b, out, layers_to_skip=preset.layers_to_skip, widths=widths, drop_vision=True, drop_audio=True) == []
    report = json.loads(result.out)
    assert report["preset"] == "gslice-e0.51b"
    assert report["size"]["footprints"]["bf16"]["disk_bytes"] == report["tensor_bytes"]


def test_preset_by_published_name(cli, e4b, tmp_path):
    out = tmp_path / "out"
    result = cli("slice", e4b, "-o", out, "--preset", "Config for official E2B Model")
    assert result.code == 0, result.err
    assert compare_to_reference(e4b, out, layers_to_skip=range(20, 25), widths=[32] * 30) == []


def refused(result, message, out):
    assert (result.code, result.err, result.out) == (2, f"error: {message}\n", "")
    assert not out.exists()
    assert hidden_leftovers(out.parent) == []


def test_preset_needs_the_e4b_layer_count(cli, e2b, tmp_path):
    out = tmp_path / "out"
    refused(
        cli("slice", e2b, "-o", out, "--preset", "gslice-e0.51b"),
        "preset gslice-e0.51b: defined for the 35-layer E4B layout, but the source has 30 layers "
        "(preset layer indices are not remapped to other layer counts)",
        out,
    )


def test_preset_width_must_scale_to_a_whole_number(cli, make_checkpoint, tmp_path):
    src = make_checkpoint(TinyGemma3n(ffn=100))
    out = tmp_path / "out"
    refused(
        cli("slice", src, "-o", out, "--preset", "gslice-e0.51b"),
        "preset gslice-e0.51b: width 2048 scaled to the source's FFN width 100 is 2048 x 100 / 16384 = 12.5, not a whole number",
        out,
    )
    # 8192 and 16384 scale to 50 and 100: that preset works on this source
    assert cli("slice", src, "-o", out, "--preset", "gslice-e1.12b").code == 0


def test_preset_needs_one_source_width(cli, make_checkpoint, tmp_path):
    src = make_checkpoint(TinyGemma3n(ffn=(64,) * 34 + (32,)))
    out = tmp_path / "out"
    refused(
        cli("slice", src, "-o", out, "--preset", "google-e2b"),
        "preset google-e2b: the source's layers have different FFN widths (32, 64); presets scale widths from one full width per layer",
        out,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layers-to-skip", "20-24"], "give either --preset or --layers-to-skip/--ffn-dims/--spec, not both"),
        (["--ffn-dims", "32"], "give either --preset or --layers-to-skip/--ffn-dims/--spec, not both"),
        (["--spec", "spec.json"], "give either --preset or --layers-to-skip/--ffn-dims/--spec, not both"),
    ],
)
def test_preset_excludes_spec_options(cli, e4b, tmp_path, args, message):
    out = tmp_path / "out"
    refused(cli("slice", e4b, "-o", out, "--preset", "google-e2b", *args), message, out)


DID_YOU_MEAN = [
    ("gslice-e1.8b", "; did you mean 'gslice-e1.84b'?"),
    ("GSLICE-E0.51B", "; did you mean 'gslice-e0.51b'?"),
    ("E2B", "; did you mean 'google-e2b'?"),
    ("google-e2.98b", "; did you mean 'google-e2.98b-layer' or 'google-e2.98b-block'?"),
    ("Config for official E2B model", "; did you mean 'Config for official E2B Model'?"),
    ("xyz", ""),
]


@pytest.mark.parametrize("name,hint", DID_YOU_MEAN)
def test_did_you_mean(cli, e4b, tmp_path, name, hint):
    out = tmp_path / "out"
    refused(cli("slice", e4b, "-o", out, "--preset", name), f"unknown preset {name!r}{hint} (`gslice presets` lists them)", out)


# -- the public proposals --------------------------------------------------------------------

KV_SLIDING = (
    "layers_to_skip: layer 18 is the KV producer of the sliding_attention layers 28, 30, 31, 32, 33 "
    "(layers 20-34 reuse earlier keys/values, num_kv_shared_layers=15); it cannot be skipped while they are kept"
)
KV_FULL = (
    "layers_to_skip: layer 19 is the KV producer of the full_attention layers {} "
    "(layers 20-34 reuse earlier keys/values, num_kv_shared_layers=15); it cannot be skipped while they are kept"
)
AUDIO_RANGE = (
    "audio_layers_to_skip: 12 is out of range: the source's audio encoder has 12 Conformer blocks (0-11). "
    "Proposals assuming 16 blocks with a 4096-wide FFN describe a different encoder: Gemma 3n's has 12 blocks "
    "with FFN width 6144 (4 x hidden size)"
)
AUDIO_FFN = (
    "audio FFN width {}: not expressible: transformers builds every Conformer FFN as 4 x hidden_size "
    "(6144 in Gemma 3n's 1536-wide encoder) with no config field for it, so a narrower one loads nowhere"
)


def float_width(index, value, floats, total):
    return (
        f"ffn_dims[{index}] = {value}.0 is not an integer: FFN widths are whole numbers of neurons (write {value}) "
        f"({floats} of the {total} widths are floats)"
    )


def size_claim(claimed, layers, effective, total):
    return (
        f"claimed_params_b: {claimed}B, but {layers} layers at the listed widths are {effective / 1e9:.2f}B effective "
        f"({effective:,}) and {total / 1e9:.2f}B total parameters by shape arithmetic on E4B"
    )


def proposal_sizes(widths):
    """(effective, total) of len(widths) E4B layers at these widths (every E4B layer has the
    same shapes apart from its FFN width, so which layers does not matter)."""
    effective, _, total = independent_counts(list(range(len(widths))), widths)
    return effective, total


W09 = [6144] * 10 + [7168] * 9 + [8192] * 7
W05 = [4096] * 8 + [5120] * 7 + [6144] * 5
W07 = [5120] * 10 + [6144] * 8 + [7168] * 5
W13 = [6144] * 10 + [7168] * 9 + [8192] * 9
W15 = [6144] * 10 + [7168] * 10 + [8192] * 10

EXPECTED_VERDICTS = {
    "Custom 0.9B (26-layer)": [KV_FULL.format("29, 34"), size_claim(0.95, 26, *proposal_sizes(W09))],
    "Custom 0.5B (20-layer)": [
        float_width(8, 5120, 7, 20),
        "claimed_layers: 20, but skipping 16 of E4B's 35 layers leaves 19",
        KV_SLIDING,
        KV_FULL.format("29, 34"),
        "ffn_dims: 20 widths given for 19 kept layers (35 source layers, 16 skipped)",
        size_claim(0.52, 20, *proposal_sizes(W05)),
    ],
    "Custom 0.7B (23-layer)": [
        float_width(0, 5120, 15, 23),
        "claimed_layers: 23, but skipping 13 of E4B's 35 layers leaves 22",
        KV_SLIDING,
        KV_FULL.format("29, 34"),
        "ffn_dims: 23 widths given for 22 kept layers (35 source layers, 13 skipped)",
        size_claim(0.71, 23, *proposal_sizes(W07)),
    ],
    "Custom 1.3B (28-layer)": [
        float_width(10, 7168, 9, 28),
        "claimed_layers: 28, but skipping 12 of E4B's 35 layers leaves 23",
        KV_SLIDING,
        KV_FULL.format("29, 34"),
        "ffn_dims: 28 widths given for 23 kept layers (35 source layers, 12 skipped)",
        size_claim(1.32, 28, *proposal_sizes(W13)),
    ],
    "Custom 1.5B (30-layer)": [
        float_width(10, 7168, 10, 30),
        "claimed_layers: 30, but skipping 16 of E4B's 35 layers leaves 19",
        KV_SLIDING,
        KV_FULL.format("29, 34"),
        "ffn_dims: 30 widths given for 19 kept layers (35 source layers, 16 skipped)",
        size_claim(1.51, 30, *proposal_sizes(W15)),
    ],
    "Reduced Audio Encoder (0.9B model)": [
        AUDIO_RANGE,
        AUDIO_FFN.format(3072),
        "claimed_source_layers: 16, but E4B's audio encoder has 12 Conformer blocks",
        "claimed_source_intermediate_size: 4096, but E4B's audio FFN width is 6144 (4 x hidden size 1536)",
    ],
    "Ultra-compact Audio Encoder (0.5B model)": [AUDIO_RANGE, AUDIO_FFN.format(2048)],
    "Minimal Audio Encoder (Web)": [AUDIO_RANGE, AUDIO_FFN.format(2048)],
}


def test_proposal_verdicts():
    verdicts = {v.name: v for v in gslice.proposals()}
    assert list(verdicts) == list(EXPECTED_VERDICTS)
    for name, expected in EXPECTED_VERDICTS.items():
        assert list(verdicts[name].problems) == expected, name
        assert not verdicts[name].valid


def test_the_26_layer_proposal_in_figures():
    v = next(v for v in gslice.proposals() if v.name == "Custom 0.9B (26-layer)")
    assert (round(v.params.effective / 1e9, 2), round(v.params.total / 1e9, 2)) == (1.47, 4.74)
    assert v.notes == (
        "widths 6144, 7168 are outside the trained 8192/16384: no published measurement covers them "
        "(the claimed MMLU 46-48% is an estimate)",
    )


@pytest.mark.parametrize("name", ["Custom 0.9B (26-layer)", "proposal-custom-0.9b-26-layer"])
def test_proposal_as_preset_is_refused_with_its_verdict(cli, e4b, tmp_path, name):
    out = tmp_path / "out"
    refused(
        cli("slice", e4b, "-o", out, "--preset", name),
        f"preset {name!r} is a public proposal that breaks the architecture's rules, so gslice refuses it: "
        + "; ".join(EXPECTED_VERDICTS["Custom 0.9B (26-layer)"]),
        out,
    )
