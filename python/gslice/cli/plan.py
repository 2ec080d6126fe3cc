"""`gslice plan`: the sizes of a slice (parameters, disk, RAM) before writing anything."""

from __future__ import annotations

import json

import click

from ..accounting import DEFAULT_CONTEXT, RAM_FORMULA, SizePlan, plan
from ..units import fmt_bytes, fmt_params
from . import main
from .common import compact_ranges, friendly_errors, render_runtimes, run_lengths, table, StrictInt
from .slice import spec_from_options


@main.command("plan")
@click.argument("src")
@click.option("--preset", default=None, help="A preset id or name (see `gslice presets`).")
@click.option("--layers-to-skip", default="", help="Decoder layers to drop: '20,21,22' or '20-24'.")
@click.option("--ffn-dims", default=None, help="FFN width for every kept layer, or one per kept layer.")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False), help="JSON file with layers_to_skip / ffn_dims.")
@click.option("--audio-layers-to-skip", default="", help="Audio Conformer blocks to drop.")
@click.option("--drop-vision", is_flag=True, help="Without the vision tower.")
@click.option("--drop-audio", is_flag=True, help="Without the audio tower.")
@click.option("--text-only", is_flag=True, help="Without both towers.")
@click.option("--context", type=StrictInt(1), default=DEFAULT_CONTEXT, show_default=True, help="Tokens of KV cache in the RAM estimate.")
@click.option("--from-hub", is_flag=True, help="Look presets up in the live Hub CSV of Google's configurations.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@friendly_errors
def plan_cmd(src, preset, layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, drop_vision, drop_audio, text_only, context, from_hub, as_json):
    """Sizes of slicing SRC (a checkpoint folder, or a config.json) without writing anything."""
    spec = spec_from_options(layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, drop_vision, drop_audio, text_only, preset=preset)
    result = plan(src, preset=preset, spec=spec, context=context, from_hub=from_hub)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else render_plan(result))


def render_plan(p: SizePlan) -> str:
    skipped = p.spec.layers_to_skip
    rows = [
        ("source", p.source),
        ("preset", p.preset or "-"),
        ("layers", f"{p.layers} of {p.source_layers}" + (f" (skipped {compact_ranges(skipped)})" if skipped else "")),
        ("FFN widths", run_lengths(p.ffn_dims)),
        ("KV sharing", f"last {p.num_kv_shared_layers} layers reuse earlier keys/values"),
    ]
    return table(rows + size_rows(p)) + "\n\n" + render_runtimes(p.runtimes.to_dict()) + "\n\n" + RAM_FORMULA


def size_rows(p: SizePlan) -> list[tuple[str, str]]:
    """Rows shared with `gslice slice`'s report."""
    c = p.params
    rows = [
        ("parameters", f"effective {_exact(c.effective)}, text {fmt_params(c.text)}, "
                       f"audio {fmt_params(c.audio)}, vision {fmt_params(c.vision)}, total {_exact(c.total)}"),
    ]
    for f in p.footprints:
        note = "" if f.scheme == "bf16" else f", {fmt_params(f.quantized_params)} params packed, groups of {p.group_size}"
        rows.append((f"{f.scheme}", f"disk {fmt_bytes(f.disk_bytes)}{note}; RAM at {p.context} tokens "
                                     f"{fmt_bytes(f.ram_bytes)}, {fmt_bytes(f.ram_ple_on_disk_bytes)} with the PLE table "
                                     f"({fmt_bytes(f.ple_bytes)}) on disk; KV cache {fmt_bytes(f.kv_cache_bytes)}"))
    return rows


def _exact(n: int) -> str:
    """'1.91B (1,905,495,648)'; small counts are already exact."""
    short = fmt_params(n)
    return short if short == f"{n:,}" else f"{short} ({n:,})"
