"""Parameter counts of E4B slices by direct arithmetic on the published layout, written apart
from gslice's planner so that tests compare two independent derivations."""

from __future__ import annotations

import json
import math
import re
from importlib import resources

LM = "model.language_model."


def published_layout() -> dict[str, tuple[int, ...]]:
    raw = json.loads(resources.files("gslice").joinpath("data", "gemma-3n-E4B.tensors.json").read_text())
    return {n: tuple(t["shape"]) for n, t in raw["tensors"].items()}


LAYOUT = published_layout()


def independent_counts(kept, widths, audio=True, vision=True):
    """(effective, text, total) of E4B with these kept layers and widths, by direct arithmetic
    on the published layout (written apart from gslice's planner)."""
    effective = text = total = 0
    for name, shape in LAYOUT.items():
        shape = list(shape)
        if m := re.match(re.escape(LM) + r"layers\.(\d+)\.(.*)", name):
            if int(m.group(1)) not in kept:
                continue
            w = widths[kept.index(int(m.group(1)))]
            if m.group(2) in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                shape[0] = w
            elif m.group(2) == "mlp.down_proj.weight":
                shape[1] = w
        elif name == LM + "embed_tokens_per_layer.weight":
            shape[1] = 256 * len(kept)
        elif name == LM + "per_layer_model_projection.weight":
            shape[0] = 256 * len(kept)
        if (not audio and "audio" in name) or (not vision and "vision" in name):
            continue
        n = math.prod(shape)
        total += n
        if name.startswith(LM):
            text += n
            if name not in (LM + "embed_tokens.weight", LM + "embed_tokens_per_layer.weight"):
                effective += n
    return effective, text, total
