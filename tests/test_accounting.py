"""Sizes from shapes alone: parameter counts against independent arithmetic on the published
E4B layout, every official row beside its published figure, bytes per storage scheme, the KV
cache, and the same figures from shard headers and from config.json."""

from __future__ import annotations

import json
import math
import re

import pytest

import gslice
from gslice import gemma3n
from gslice.accounting import RAM_FORMULA, tensor_bytes
from gslice.errors import SourceError, SpecError
from gslice.official_configs import shipped_configs
from gslice.spec import SliceSpec
from gslice.testing import E2B_LIKE, E4B_LIKE, config, tensor_shapes

from shape_arithmetic import LAYOUT, independent_counts


# -- shapes from config.json ----------------------------------------------------------------


def test_config_shapes_reproduce_the_published_layout():
    shapes = gemma3n.shapes_from_config(gemma3n.e4b_config())
    assert shapes == LAYOUT
    assert len(shapes) == 1676
    assert sum(math.prod(s) for s in shapes.values()) == 7_849_978_192  # the layout file's own figure


@pytest.mark.parametrize("model", [E4B_LIKE, E2B_LIKE], ids=["e4b-like", "e2b-like"])
def test_config_shapes_match_the_tiny_layout(model):
    # The tiny checkpoints' vision tower is a stand-in; everything else follows the config.
    derived = gemma3n.shapes_from_config(config(model))
    expected = tensor_shapes(model)
    not_vision = lambda d: {n: s for n, s in d.items() if not n.startswith("model.vision_tower.")}  # noqa: E731
    assert not_vision(derived) == not_vision(expected)


def test_config_shapes_refuse_an_unknown_vision_tower():
    cfg = gemma3n.e4b_config()
    cfg["vision_config"]["architecture"] = "resnet50"
    with pytest.raises(SourceError) as e:
        gemma3n.shapes_from_config(cfg, "c.json")
    assert str(e.value) == (
        "c.json: vision_config.architecture is 'resnet50'; gslice knows the shapes of 'mobilenetv5_300m_enc' "
        "only (give the checkpoint folder instead of its config)"
    )


# -- parameter counts -------------------------------------------------------------------------


def test_official_e2b_on_e4b_exact():
    p = gslice.plan(preset="google-e2b")
    assert p.params.effective == 1_905_495_648
    assert p.params.text == 4_456_156_768
    same = gslice.plan(spec=SliceSpec(layers_to_skip=tuple(range(20, 25)), ffn_dims=8192))
    assert same.params == p.params
    kept = [i for i in range(35) if i not in range(20, 25)]
    assert independent_counts(kept, [8192] * 30)[:2] == (1_905_495_648, 4_456_156_768)


def test_main_model():
    p = gslice.plan(preset="google-main")
    assert round(p.params.effective / 1e9, 2) == 3.98
    assert (p.params.effective, p.params.total) == independent_counts(list(range(35)), [16384] * 35)[::2]


# Effective parameters by shape arithmetic (independent_counts), for the 16 published rows.
OFFICIAL_EFFECTIVE = {
    "Main model": 3_980_491_248,
    "Config for official E2B Model": 1_905_495_648,
    "Config for E1.96B (layer-level)": 1_955_827_296,
    "Config for E2.54B (layer-level)": 2_520_873_456,
    "Config for E2.69B (layer-level)": 2_671_868_400,
    "Config for E2.98B (layer-level)": 2_973_858_288,
    "Config for E3.18B (layer-level)": 3_175_184_880,
    "Config for E3.39B (layer-level)": 3_376_511_472,
    "Config for E3.59B (layer-level)": 3_577_838_064,
    "Config for E3.79B (layer-level)": 3_779_164_656,
    "Config for E2.49B (block-level)": 2_470_541_808,
    "Config for E2.73B (block-level)": 2_722_200_048,
    "Config for E2.98B (block-level)": 2_973_858_288,
    "Config for E3.24B (block-level)": 3_225_516_528,
    "Config for E3.49B (block-level)": 3_477_174_768,
    "Config for E3.79B (block-level)": 3_728_833_008,
}
# Google's table and shape arithmetic differ by up to this much (docs/design.md).
PUBLISHED_TOLERANCE_B = 0.02


def test_every_official_row_computed_beside_published(capsys):
    rows = shipped_configs()
    assert [r.name for r in rows] == list(OFFICIAL_EFFECTIVE)
    lines = [f"{'configuration':34} {'published':>9} {'computed':>15} {'diff':>8}"]
    for row in rows:
        kept = [i for i in range(35) if i not in row.layers_to_skip]
        effective = gslice.plan(preset=row.name).params.effective
        assert effective == OFFICIAL_EFFECTIVE[row.name] == independent_counts(kept, list(row.ffn_dims))[0]
        diff = effective / 1e9 - row.published_effective_b
        assert abs(diff) <= PUBLISHED_TOLERANCE_B, row.name
        lines.append(f"{row.name:34} {row.published_effective_b:>8.2f}B {effective:>15,} {diff:>+8.4f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_towers_counted_apart():
    p = gslice.plan(preset="google-e2b")
    kept = [i for i in range(35) if i not in range(20, 25)]
    text_audio = gslice.plan(preset="google-e2b", modalities="text+audio")
    text = gslice.plan(preset="google-e2b", modalities="text")
    assert text.params.total == p.params.text == independent_counts(kept, [8192] * 30, audio=False, vision=False)[2]
    assert text_audio.params.total == independent_counts(kept, [8192] * 30, vision=False)[2]
    assert p.params.total == p.params.text + p.params.audio + p.params.vision
    assert (text.params.audio, text.params.vision, text_audio.params.vision) == (0, 0, 0)


# -- bytes ------------------------------------------------------------------------------------


def test_pack_quantized_tensor_bytes():
    # E4B's gate_proj [16384, 2048], groups of 128: int32 words of 8 nibbles (or 4 bytes),
    # one bf16 scale per group, and an int64[2] shape.
    assert tensor_bytes((16384, 2048), 4, 128) == 16384 * 2048 // 2 + 16384 * 16 * 2 + 16
    assert tensor_bytes((16384, 2048), 8, 128) == 16384 * 2048 + 16384 * 16 * 2 + 16
    assert tensor_bytes((16384, 2048), None, 128) == 16384 * 2048 * 2
    assert tensor_bytes((3, 10), 4, 4) == 3 * 2 * 4 + 3 * 3 * 2 + 16  # 10 nibbles -> 2 words; 3 groups


QUANTIZED = re.compile(
    r"^model\.(language_model\.)?(layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|laurel\.linear_(left|right)"
    r"|per_layer_input_gate|per_layer_projection)|altup_(unembed_)?projections\.\d+|per_layer_model_projection)\.weight$"
)


@pytest.mark.parametrize("preset", ["google-e2b", "google-main", "gslice-e0.51b"])
def test_disk_bytes_per_scheme(preset):
    p = gslice.plan(preset=preset, modalities="text")
    shapes = gemma3n.output_shapes(
        gemma3n.architecture(gemma3n.e4b_config()), LAYOUT, gemma3n.resolve(gemma3n.architecture(gemma3n.e4b_config()), p.spec)
    )
    bf16 = p.footprint("bf16")
    assert bf16.disk_bytes == 2 * p.params.total
    for scheme, bits in (("int8", 8), ("int4", 4)):
        expected, packed_params = 0, 0
        for name, shape in shapes.items():
            if QUANTIZED.match(name) and shape[1] % 128 == 0:
                rows, cols = shape
                expected += rows * cols * bits // 8 + rows * (cols // 128) * 2 + 16
                packed_params += rows * cols
            else:
                expected += 2 * math.prod(shape)
        f = p.footprint(scheme)
        assert (f.disk_bytes, f.quantized_params) == (expected, packed_params)


def test_e2b_text_only_figures():
    p = gslice.plan(preset="google-e2b", modalities="text")
    f = {s: p.footprint(s) for s in ("bf16", "int8", "int4")}
    assert f["bf16"].disk_bytes == 8_912_313_536
    assert f["int4"].disk_bytes == 6_090_809_328
    # the PLE table: 262,144 rows x 30 kept layers x 256 columns, bf16 in every scheme
    assert {x.ple_bytes for x in f.values()} == {262_144 * 30 * 256 * 2}


def test_kv_cache():
    per_token = 2 * 2 * 256 * 2  # K and V, 2 KV heads, head_dim 256, bf16
    e4b = gslice.plan()  # layers 0-19 compute K/V: 16 sliding (window 512), 4 full
    assert e4b.footprint("bf16").kv_cache_bytes == (16 * 512 + 4 * 4096) * per_token == 50_331_648
    assert gslice.plan(context=100).footprint("int4").kv_cache_bytes == 20 * 100 * per_token
    assert gslice.plan(context=100_000).footprint("bf16").kv_cache_bytes == (16 * 512 + 4 * 100_000) * per_token
    # gslice-e0.51b keeps 0-4, 15-19 (their own K/V: 8 sliding, 2 full) and 30-34 (sharing)
    small = gslice.plan(preset="gslice-e0.51b")
    assert small.num_kv_shared_layers == 5
    assert small.footprint("bf16").kv_cache_bytes == (8 * 512 + 2 * 4096) * per_token


def test_resident_weights_leave_out_unused_kv_projections():
    for preset, sharing in (("google-main", 15), ("google-e2b", 10), ("gslice-e1.84b", 5)):
        f = gslice.plan(preset=preset, modalities="text").footprint("bf16")
        unused = sharing * (512 * 2048 * 2 + 256) * 2  # k_proj, v_proj, k_norm of each KV-sharing layer
        assert f.resident_bytes == f.disk_bytes - unused
        assert f.ram_bytes == f.resident_bytes + f.kv_cache_bytes
        assert f.ram_ple_on_disk_bytes == f.ram_bytes - f.ple_bytes


def test_formula_is_stated():
    assert "min(context, sliding_window)" in RAM_FORMULA
    assert "KV-sharing layers add nothing" in RAM_FORMULA


# -- headers, config.json, and the slice report ---------------------------------------------------


def test_headers_and_config_agree(e4b):
    from_headers = gslice.plan(e4b, preset="gslice-e1.48b", modalities="text+audio")
    from_config = gslice.plan(e4b / "config.json", preset="gslice-e1.48b", modalities="text+audio")
    from_dict = gslice.plan(json.loads((e4b / "config.json").read_text()), preset="gslice-e1.48b", modalities="text+audio")
    assert from_headers.params == from_config.params == from_dict.params
    assert from_headers.footprints == from_config.footprints == from_dict.footprints
    # the tiny checkpoint's widths are 64/16384 of E4B's: 8192 -> 32, 16384 -> 64
    assert from_headers.ffn_dims == (32, 32, 32, 32, 64) * 4


def test_slice_report_carries_the_figures(e4b, tmp_path):
    report = gslice.slice_model(e4b, tmp_path / "out", preset="gslice-e0.66b", text_only=True)
    assert report.preset == "gslice-e0.66b"
    assert report.size["footprints"]["bf16"]["disk_bytes"] == report.tensor_bytes
    assert report.size["params"] == report.params
    assert report.size["spec"]["drop_vision"] and report.size["spec"]["drop_audio"]


PLAN_ERRORS = [
    (dict(src_or_config="/nonexistent"), SourceError, "source /nonexistent does not exist"),
    (dict(preset="google-e2b", spec=SliceSpec(ffn_dims=8192)), SpecError, "give either a preset or layers_to_skip/ffn_dims, not both"),
    (dict(context=0), gslice.ArgumentError, "context = 0 is out of range: it must be at least 1"),
    (dict(modalities="video"), SpecError, "modalities: 'video' is not one of all, text+audio, text"),
]


@pytest.mark.parametrize("kwargs,kind,message", PLAN_ERRORS, ids=[m for _, _, m in PLAN_ERRORS])
def test_plan_errors(kwargs, kind, message):
    with pytest.raises(kind) as e:
        gslice.plan(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("modalities", ["all", "text"])
def test_a_sliced_config_describes_its_slice(modalities):
    # config.json as gslice writes it for a slice (gemma3n_text when text-only) gives the
    # slice's own shapes, so `gslice plan out/config.json` describes the output
    arch = gemma3n.e4b_architecture()
    sliced = gslice.plan(preset="gslice-e0.88b", modalities=modalities)
    res = gemma3n.resolve(arch, sliced.spec)
    new_config = gemma3n.rewrite_config(gemma3n.e4b_config(), arch, res)
    assert gemma3n.shapes_from_config(new_config) == gemma3n.output_shapes(arch, LAYOUT, res)
    again = gslice.plan(new_config)
    assert (again.params, again.footprints) == (sliced.params, sliced.footprints)
