"""`gslice presets`: Google's configurations, gslice's presets and the refused public proposals."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable

import click

from ..accounting import DEFAULT_CONTEXT, SizePlan, plan
from ..catalogue import MODALITIES, Preset, presets
from ..proposals import ProposalVerdict, proposals
from ..runtimes import NAMES, RUNTIMES
from ..units import fmt_bytes
from . import main
from .common import friendly_errors, StrictInt

Cell = Callable[[Preset, SizePlan], str]

# Disk size per output format, side by side. A format module adds its own columns here (the
# GGUF one: one per GGUF file type, from formats/gguf.py), so the table, the Markdown in the
# README and --json stay one list.
SIZE_COLUMNS: list[tuple[str, Cell]] = [
    ("bf16", lambda p, s: fmt_bytes(s.footprint("bf16").disk_bytes)),
    ("int4", lambda p, s: fmt_bytes(s.footprint("int4").disk_bytes)),
    *((f"GGUF {t}", lambda p, s, t=t: fmt_bytes(s.gguf_bytes[t]) if s.gguf_bytes else "-") for t in ("q8_0", "q4_k_m", "q4_0")),
]


@main.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--markdown", is_flag=True, help="Print Markdown tables (the README's).")
@click.option("--from-hub", is_flag=True, help="Read Google's configurations from the Hub dataset google/gemma3n-slicing-configs.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Also draw effective parameters vs MMLU into this PNG.")
@click.option("--modalities", type=click.Choice(list(MODALITIES)), default="all", show_default=True, help="Towers kept in the figures.")
@click.option("--context", type=StrictInt(1), default=DEFAULT_CONTEXT, show_default=True, help="Tokens of KV cache in the RAM figures.")
@friendly_errors
def presets_cmd(as_json, markdown, from_hub, plot_file, modalities, context):
    """List the presets with sizes computed from shapes on E4B (no download)."""
    catalogue = presets(from_hub)
    plans = [plan(None, preset=p, modalities=modalities, context=context) for p in catalogue]
    if plot_file:
        from ..plotting import plot_presets

        plot_presets(catalogue, plot_file)
    if as_json:
        click.echo(json.dumps(catalogue_json(catalogue, plans), indent=2))
    elif markdown:
        click.echo(render_markdown(catalogue, plans, modalities, context))
    else:
        click.echo(render_table(catalogue, plans, modalities, context))


def columns() -> list[tuple[str, Cell]]:
    return [
        ("preset", lambda p, s: p.id),
        ("layers", lambda p, s: str(p.layers)),
        ("effective", lambda p, s: billions(s.params.effective)),
        ("published", lambda p, s: f"{p.published_effective_b:.2f}B" if p.published_effective_b is not None else "-"),
        ("MMLU", lambda p, s: f"{p.published_mmlu:.1f}%" if p.published_mmlu is not None else "-"),
        ("total", lambda p, s: billions(s.params.total)),
        *SIZE_COLUMNS,
        ("RAM bf16", lambda p, s: fmt_bytes(s.footprint("bf16").ram_bytes)),
        ("RAM int4", lambda p, s: fmt_bytes(s.footprint("int4").ram_bytes)),
        ("quality", lambda p, s: "published" if p.published_mmlu is not None else p.quality),
        ("runtimes", lambda p, s: s.runtimes.summary()),
    ]


def header() -> list[str]:
    return [name for name, _ in columns()]


def row(p: Preset, s: SizePlan) -> list[str]:
    return [cell(p, s) for _, cell in columns()]


def billions(n: int) -> str:
    return f"{n / 1e9:.2f}B"


def render_table(catalogue, plans, modalities: str, context: int) -> str:
    rows = [header()] + [row(p, s) for p, s in zip(catalogue, plans)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", footnote(modalities, context), "", "public proposals (refused by gslice):"]
    for v in proposals():
        lines.append(f"  {v.id}  ({v.name}){_claim_summary(v)}")
        lines += [f"    - {m}" for m in v.problems]
        lines += [f"    note: {m}" for m in v.notes]
    return "\n".join(lines)


def render_markdown(catalogue, plans, modalities: str, context: int) -> str:
    out = ["| " + " | ".join(header()) + " |", "|" + "|".join("---" for _ in header()) + "|"]
    out += ["| " + " | ".join(f"`{c}`" if k == 0 else c for k, c in enumerate(row(p, s))) + " |" for p, s in zip(catalogue, plans)]
    out += ["", footnote(modalities, context), "", "Public proposals, refused with these verdicts:", ""]
    for v in proposals():
        out.append(f"- **{v.name}** (`{v.id}`){_claim_summary(v)}")
        out += [f"  - {m}" for m in v.problems]
    return "\n".join(out)


def footnote(modalities: str, context: int) -> str:
    return (
        f"Sizes for the E4B source with towers kept: {modalities}. effective/total: computed from shapes; "
        f"published: Google's table (differs by up to 0.02B). bf16/int4: tensor bytes on disk (int4: text-decoder "
        f"linear weights pack-quantized, groups of 128). GGUF q8_0/q4_k_m/q4_0: tensor data of the `--format gguf` file "
        "(q4_k_m: the mix Ollama and LM Studio default to), "
        "the text decoder only, each tensor at the type llama.cpp's own tools give it (- where llama.cpp would not "
        f"compute the slice correctly, so gslice refuses it). RAM: weights + KV cache for {context} tokens, PLE table "
        "resident (`gslice plan` also shows it memory-mapped). runtimes: which of "
        f"{', '.join(NAMES)} compute the slice correctly (`gslice plan` says why not; docs/runtimes.md)."
    )


def _claim_summary(v: ProposalVerdict) -> str:
    if v.params is None:
        return ""
    claimed = v.claims.get("claimed_params_b")
    head = f": claims {claimed}B; " if claimed is not None else ": "
    return head + f"computed {billions(v.params.effective)} effective, {billions(v.params.total)} total"


def catalogue_json(catalogue, plans) -> dict:
    def preset_json(p: Preset, s: SizePlan) -> dict:
        return {
            "id": p.id,
            "name": p.name,
            "origin": p.origin,
            "layers_to_skip": list(p.layers_to_skip),
            "ffn_dims": list(p.ffn_dims),
            "published_effective_b": p.published_effective_b,
            "published_mmlu": p.published_mmlu,
            "trained_widths": p.trained_widths,
            "quality": p.quality,
            "runtimes": list(s.runtimes.supported),
            "plan": s.to_dict(),
        }

    def proposal_json(v: ProposalVerdict) -> dict:
        return {
            "id": v.id,
            "name": v.name,
            "kind": v.kind,
            "claims": v.claims,
            "problems": list(v.problems),
            "notes": list(v.notes),
            "params": None if v.params is None else asdict(v.params),
        }

    return {
        "runtimes": [{"name": r.name, "code": r.code, "also": list(r.also), "ran": r.ran} for r in RUNTIMES],
        "presets": [preset_json(p, s) for p, s in zip(catalogue, plans)],
        "proposals": [proposal_json(v) for v in proposals()],
    }
