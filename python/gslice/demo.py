"""`gslice demo`: a whole slice on a tiny built-in checkpoint, verified, with no download."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .slicing import SliceReport, slice_model
from .testing import E4B_LIKE, compare_to_reference, write_tiny_checkpoint

DEMO_SKIP = tuple(range(20, 25))
DEMO_WIDTH = E4B_LIKE.widths()[0] // 2  # the E2B config's 8192 of E4B's 16384


@dataclass(frozen=True)
class DemoResult:
    source: Path
    report: SliceReport
    tensors_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def run_demo(workdir: Path, progress: Callable[[int, int], None] | None = None) -> DemoResult:
    """Writes a tiny E4B-shaped checkpoint, cuts the official E2B config out of it, and checks
    every output tensor against an independent numpy slice and the rewritten config."""
    src = write_tiny_checkpoint(workdir / "tiny-gemma-3n-E4B", E4B_LIKE, shards=2)
    out = workdir / "tiny-gemma-3n-E2B"
    report = slice_model(src, out, layers_to_skip=DEMO_SKIP, ffn_dims=DEMO_WIDTH, progress=progress)
    problems = compare_to_reference(src, out, layers_to_skip=DEMO_SKIP, widths=[DEMO_WIDTH] * report.layers)
    text = json.loads((out / "config.json").read_text())["text_config"]
    if text["num_hidden_layers"] != 30 or len(text["layer_types"]) != 30 or text["num_kv_shared_layers"] != 10:
        problems.append(f"config.json: unexpected text_config {text['num_hidden_layers']=}")
    return DemoResult(src, report, report.tensors, tuple(problems))
