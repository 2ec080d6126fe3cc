"""Every preset of `gslice presets` (Google's 16 configs and gslice's own) slices a tiny
35-layer, E4B-shaped transformers model, and transformers loads the output and computes what the
module-level slice computes."""

from __future__ import annotations

import pytest

import gslice

from .conftest import TOLERANCE, Source
from .tiny_gemma3n import build_tiny_model, load_with_info, logits, max_abs_diff, module_slice, save

pytestmark = pytest.mark.interop

FULL_WIDTH = 64  # the tiny model's FFN; presets are written for E4B's 16384


@pytest.fixture(scope="module")
def e4b_shaped(tmp_path_factory) -> Source:
    """35 layers, the last 15 KV-shared (producers 18 and 19), as E4B."""
    model = build_tiny_model(num_layers=35, num_kv_shared=15, ffn_width=FULL_WIDTH, seed=4)
    return Source(model, save(model, tmp_path_factory.mktemp("src") / "e4b-shaped"))


@pytest.mark.parametrize("preset", [p.id for p in gslice.presets()])
def test_preset_loads_and_matches_the_module_slice(preset, e4b_shaped, tmp_path, record):
    p = next(q for q in gslice.presets() if q.id == preset)
    out = tmp_path / "out"
    report = gslice.slice_model(e4b_shaped.path, out, preset=preset)
    widths = [w * FULL_WIDTH // 16384 for w in p.ffn_dims]
    assert report.ffn_dims == widths and report.layers == p.layers
    loaded, info = load_with_info(out)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    oracle = module_slice(e4b_shaped.model, p.layers_to_skip, widths)
    assert record(f"preset {preset}", max_abs_diff(logits(loaded), logits(oracle))) <= TOLERANCE
