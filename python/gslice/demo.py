"""`gslice demo`: a whole slice on a tiny built-in checkpoint, verified, with no download."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import ownership
from .manifest import write_folder_manifest
from .slicing import SliceReport, slice_model
from .testing import E4B_LIKE, compare_to_reference, write_tiny_checkpoint

DEMO_SKIP = tuple(range(20, 25))
DEMO_WIDTH = E4B_LIKE.widths()[0] // 2  # the E2B config's 8192 of E4B's 16384
SOURCE_NAME = "tiny-gemma-3n-E4B"
OUTPUT_NAME = "tiny-gemma-3n-E2B"


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
    every output tensor against an independent numpy slice and the rewritten config. Both
    folders are gslice's, so a second run into the same ``workdir`` replaces them; anything
    else at their paths is refused."""
    source, out = workdir / SOURCE_NAME, workdir / OUTPUT_NAME
    ownership.check_output(out, overwrite=True)  # before the source is (re)written
    src = write_demo_source(source)
    report = slice_model(src, out, layers_to_skip=DEMO_SKIP, ffn_dims=DEMO_WIDTH, overwrite=True, progress=progress)
    problems = compare_to_reference(src, out, layers_to_skip=DEMO_SKIP, widths=[DEMO_WIDTH] * report.layers)
    text = json.loads((out / "config.json").read_text())["text_config"]
    if text["num_hidden_layers"] != 30 or len(text["layer_types"]) != 30 or text["num_kv_shared_layers"] != 10:
        problems.append(f"config.json: unexpected text_config {text['num_hidden_layers']=}")
    return DemoResult(src, report, report.tensors, tuple(problems))


def write_demo_source(dest: Path) -> Path:
    """The tiny checkpoint, with a manifest that marks the folder as gslice's; written beside
    ``dest`` and put in its place once complete (replacing only an earlier demo source)."""
    dest = ownership.check_output(dest, overwrite=True)
    tmp = dest.parent / f".{dest.name}.gslice-partial-{os.getpid()}-0"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_tiny_checkpoint(tmp, E4B_LIKE, shards=2)
        write_folder_manifest(tmp, {"kind": "demo source", "model": "tiny E4B-shaped Gemma 3n (gslice.testing.E4B_LIKE)"})
        if dest.exists():
            old = dest.parent / f".{dest.name}.gslice-old-{os.getpid()}-0"
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
