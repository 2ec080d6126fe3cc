"""`gslice recommend`: the largest preset whose estimated RAM fits a budget."""

from __future__ import annotations

import json

import click

from ..accounting import DEFAULT_CONTEXT, RAM_FORMULA, SCHEMES
from ..catalogue import MODALITIES
from ..recommendation import Recommendation, nothing_fits, recommend
from ..runtimes import NAMES
from ..units import fmt_bytes, fmt_params
from . import main
from .common import friendly_errors, table, StrictInt

FLAGS = {"all": "", "text+audio": " --drop-vision", "text": " --text-only"}


@main.command("recommend")
@click.option("--ram", required=True, help="Memory the model may use, e.g. 4GB or 3.5GiB.")
@click.option("--context", type=StrictInt(1), default=DEFAULT_CONTEXT, show_default=True, help="Tokens of KV cache to reserve.")
@click.option("--modalities", type=click.Choice(list(MODALITIES)), default="all", show_default=True, help="Towers to keep.")
@click.option("--quant", type=click.Choice(SCHEMES), default="bf16", show_default=True, help="Weight storage the estimate assumes.")
@click.option("--ple-on-disk", is_flag=True, help="Assume a runtime that memory-maps the PLE table instead of loading it.")
@click.option("--runtime", type=click.Choice(NAMES), default=None, help="Only presets this runtime computes correctly (see docs/runtimes.md).")
@click.option("--from-hub", is_flag=True, help="Use the live Hub CSV of Google's configurations.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@friendly_errors
def recommend_cmd(ram, context, modalities, quant, ple_on_disk, runtime, from_hub, as_json):
    """The best preset of E4B for a RAM budget, and the next larger one that does not fit."""
    rec = recommend(ram, context=context, modalities=modalities, quant=quant, ple_on_disk=ple_on_disk,
                    from_hub=from_hub, runtime=runtime)
    if as_json:
        click.echo(json.dumps(rec.to_dict(), indent=2))
    if rec.best is None:
        raise nothing_fits(rec)
    if not as_json:
        click.echo(render_recommendation(rec))


def render_recommendation(rec: Recommendation) -> str:
    best, f = rec.best, rec.best.footprint(rec.quant)
    needed = rec.needed_bytes(best)
    rows = [
        ("budget", f"{fmt_bytes(rec.budget_bytes)} for {rec.modalities}, {rec.quant} weights, {rec.context} tokens of context"
                   + (", PLE table memory-mapped" if rec.ple_on_disk else ", PLE table in RAM")),
        ("best", f"{best.preset}: {fmt_params(best.params.effective)} effective, {best.layers} layers"),
        ("needs", f"{fmt_bytes(needed)} = weights {fmt_bytes(needed - f.kv_cache_bytes)} + KV cache "
                  f"{fmt_bytes(f.kv_cache_bytes)} ({fmt_bytes(rec.budget_bytes - needed)} to spare)"),
        ("PLE table", f"{fmt_bytes(f.ple_bytes)} ({'not counted' if rec.ple_on_disk else 'counted'}); "
                      f"RAM with it {'in RAM' if rec.ple_on_disk else 'on disk'}: "
                      f"{fmt_bytes(f.ram_bytes if rec.ple_on_disk else f.ram_ple_on_disk_bytes)}"),
        ("on disk", f"{fmt_bytes(f.disk_bytes)} as {rec.quant}"),
        ("runtimes", f"computed correctly by: {best.runtimes.summary()}"
                     + (f" (only the {len(rec.candidates)} presets {rec.runtime} computes correctly were considered)"
                        if rec.runtime else "")),
    ]
    if rec.runner_up is not None:
        r = rec.runner_up
        rows.append(("runner-up", f"{r.preset}: {fmt_params(r.params.effective)} effective, needs "
                                  f"{fmt_bytes(rec.needed_bytes(r))}, {fmt_bytes(rec.runner_up_excess_bytes)} over the budget"))
    else:
        rows.append(("runner-up", "none: the best is the largest preset"))
    command = f"gslice slice gemma-3n-E4B-it/ --preset {best.preset}{FLAGS[rec.modalities]} -o OUT/"
    if rec.quant != "bf16":
        command += f" --quant {rec.quant} --group-size {best.group_size}"
    return table(rows) + f"\n\n{command}\n\n{RAM_FORMULA}"
