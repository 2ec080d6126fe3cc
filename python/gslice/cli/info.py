"""`gslice info`: describe a checkpoint without reading its weights."""

from __future__ import annotations

import json

import click

from ..inspection import describe
from ..sources import resolve_source
from ..units import fmt_bytes, fmt_params
from . import main
from .common import compact_ranges, friendly_errors, render_runtimes, run_lengths, table


@main.command("info")
@click.argument("src")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub source (default: main).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@friendly_errors
def info_cmd(src, revision, as_json):
    """Describe a Gemma 3n checkpoint (folder or Hub repo id): layers, widths, KV sharing, towers, sizes, runtimes."""
    info = describe(resolve_source(src, revision))
    click.echo(json.dumps(info, indent=2) if as_json else render_info(info))


def render_info(d: dict) -> str:
    kv = d["kv_sharing"]
    producers = ", ".join(f"{layer} ({kind})" for kind, layer in kv["producers"].items())
    rows = [
        ("source", d["source"]),
        ("model type", f"{d['model_type']} ({', '.join(d['architectures']) or 'unknown class'})"),
        ("layers", f"{d['layers']}: " + ", ".join(f"{k} x {v}" for k, v in d["layer_type_counts"].items())),
        ("full attention", compact_ranges(d["full_attention_layers"]) or "none"),
        ("FFN widths", run_lengths(d["ffn_widths"])),
        ("KV sharing", f"layers {kv['first_shared']}-{d['layers'] - 1} reuse the K/V of layers {producers}"
         if kv["num_kv_shared_layers"] else "none"),
    ]
    for name, t in d["towers"].items():
        detail = f"{fmt_params(t['params'])} params, {fmt_bytes(t['bytes'])}" if t["present"] else "absent"
        if t.get("blocks") is not None:
            detail += f", {t['blocks']} Conformer blocks"
        rows.append((name, detail))
    p = d["params"]
    rows += [
        ("parameters", f"effective {fmt_params(p['effective'])}, text {fmt_params(p['text'])}, total {fmt_params(p['total'])}"),
        ("tensors", f"{d['tensors']:,} in {d['shards']} shard{'s' if d['shards'] != 1 else ''}, {fmt_bytes(d['bytes'])}"),
    ]
    return table(rows) + "\n\n" + render_runtimes(d["runtimes"], "it as it is (unsliced)")
