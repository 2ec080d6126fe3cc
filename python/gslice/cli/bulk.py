"""`gslice bulk`: many presets from one source, shared tensors written once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from .. import hub, interrupts
from ..evaluation import DEFAULT_CONTEXT, check_models, evaluate
from ..evaluation import outputs as eval_outputs
from ..evaluation import runners as eval_runners
from ..evaluation.record import record
from ..evaluation.report import fmt_kl
from ..errors import Interrupted
from .slice import format_option_decorators, format_options, upload_output
from ..bulk import BulkReport, prepare_bulk, select_presets, write_bulk
from ..progress import ByteProgress, TokenProgress
from ..units import fmt_bytes, fmt_params, parse_size
from ..arguments import MAX_THREADS
from . import main
from .common import download_rows, friendly_errors, full_download_option, StrictInt
from .eval import eval_settings


@main.command("bulk")
@click.argument("src")
@click.option("--presets", "preset_names", default="official", show_default=True, help="'official', 'all', or names/slugs separated by commas.")
@click.option("-o", "--output", "out", required=True, help="Folder that receives one sub-folder per preset.")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub source (default: main).")
@click.option("--jobs", type=StrictInt(1, MAX_THREADS), default=None, help="Worker threads of the engine (default: all cores).")
@click.option("--resume", is_flag=True, help="Keep finished outputs whose manifest checks out; clear what an interrupted run left.")
@click.option("--overwrite", is_flag=True, help="Replace existing preset folders.")
@click.option("--no-dedupe", is_flag=True, help="Write every output's files independently (no hard links).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard.")
@format_option_decorators
@click.option("--push-to-hub", "push_template", default=None, metavar="REPO", help="Upload each output to REPO, which must contain {slug}, e.g. me/gemma-3n-{slug}.")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repos as private.")
@click.option("--dry-run", is_flag=True, help="Plan and validate everything, print what would be written; write nothing.")
@click.option("--eval", "eval_text", default=None, metavar="TEXT", help="Evaluate every output against SRC on TEXT (a file or folder; 'sample': gslice's sample) and record the figures "
                   "in its manifest and model card (GGUF: <file>.gslice-eval.json). GGUF and MLX outputs are measured against the "
                   "source written in their format too (OUT/source-<type>), q8_0 / 8-bit for quantized ones.")
@click.option("--eval-context", type=StrictInt(2), default=DEFAULT_CONTEXT, show_default=True, help="With --eval: tokens per window.")
@click.option("--eval-max-tokens", type=StrictInt(1), default=None, help="With --eval: score only the first N tokens.")
@click.option("--hash-source", is_flag=True, help="Record the SHA-256 of every source shard in the manifests (reads the whole source).")
@full_download_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
@friendly_errors
def bulk_cmd(src, preset_names, out, revision, jobs, resume, overwrite, no_dedupe, max_shard_size, fmt, gguf_type, imatrix, mlx_bits,
             mlx_group_size, quant, group_size, quant_embeddings, quant_audio, push_template, private, eval_text, eval_context, eval_max_tokens,
             dry_run, hash_source, full_download, as_json, quiet):
    """Write every chosen preset of SRC (a folder or a Hub repo id) into OUT/<preset-slug>/
    (with --format gguf: OUT/<preset-slug>.gguf)."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    presets = select_presets(preset_names)
    out_format = format_options(fmt, gguf_type, quant, group_size, quant_embeddings, quant_audio, mlx_bits, mlx_group_size,
                                imatrix)
    if push_template and out_format.name == "gguf":
        raise click.UsageError("--push-to-hub uploads checkpoint folders; upload GGUF files with huggingface_hub's upload_file")
    shard_size = parse_size(max_shard_size, "--max-shard-size")
    repos = _repos(push_template, presets)
    show = not (quiet or as_json)
    reference = eval_outputs.reference_format(out_format) if eval_text else None
    with ByteProgress("hashing source", enabled=show) as hashing, ByteProgress("checking finished outputs", enabled=show) as bar:
        plan = prepare_bulk(src, presets, out, revision=revision, resume=resume, overwrite=overwrite,
                            hash_source=hash_source and not dry_run, format=out_format, progress=bar, hash_progress=hashing,
                            # --eval on Hugging Face folders runs the source checkpoint itself: a Hub source must
                            # then be downloaded whole (a GGUF or MLX reference is written from its ranges)
                            full_download=full_download or (bool(eval_text) and reference is None), weights=not dry_run,
                            reference=reference)
    evaluation = _eval_settings(eval_text, eval_context, eval_max_tokens, jobs, plan, out_format) if eval_text and not dry_run else None
    if repos and not dry_run:
        for repo in repos.values():
            hub.create_repo(repo, private=private)
    try:
        bars = show and not dry_run
        with ByteProgress("downloading", enabled=bars) as fetch_bar, \
                ByteProgress(f"{sum(it.action != 'skip' for it in plan.items)} outputs", enabled=bars) as bar:
            report = write_bulk(plan, dedupe=not no_dedupe, threads=jobs, max_shard_size=shard_size, progress=bar,
                                dry_run=dry_run, download_progress=fetch_bar)
    except Interrupted as e:
        skipped = sum(it.action == "skip" for it in plan.items)
        kept = f" ({skipped} finished earlier were kept)" if skipped else ""
        raise Interrupted(f"{e}{kept}; run again with --resume to finish", e.signum, e.completed) from None
    if not quiet:
        for line in report.leftovers:
            click.echo(f"note: {line}", err=True)
    if not dry_run:
        interrupts.set_note(f"the {len(report.rows)} outputs in {report.output_dir} are complete")
    if evaluation is not None:
        report = _evaluate(report, plan.source.path if reference is None else None, evaluation, show)
    uploaded = {}
    if repos and not dry_run:
        for row in report.rows:
            uploaded[row.slug] = upload_output(Path(row.dir), repos[row.slug], f"Upload preset {row.preset} made with gslice")
    if as_json:
        d = report.to_dict()
        if repos:
            d["hub"] = {slug: {"repo": repo, "private": private, "url": uploaded.get(slug)} for slug, repo in repos.items()}
        click.echo(json.dumps(d, indent=2))
    elif not quiet:
        click.echo(render_bulk(report))
        if repos:
            verb = "would upload" if dry_run else "uploaded"
            click.echo("\n".join(f"{verb} {slug} to {hub.repo_url(repo)}" for slug, repo in repos.items()))


def _eval_settings(text, context, max_tokens, jobs, plan, out_format):
    """--eval's settings, the texts read and the runtimes checked before anything is written."""
    settings = eval_settings([] if text == "sample" else [text], context, None, max_tokens, threads=jobs, text_option="--eval")
    runtime = eval_outputs.runtime(out_format)
    if eval_outputs.reference_format(out_format) is None:
        check_models([plan.source.path])  # the source checkpoint is the reference
    eval_runners.require(runtime, "each output")
    return settings


def _evaluate(report: BulkReport, source, settings, show: bool) -> BulkReport:
    """Every output against the reference, which runs once: ``source``, or the run's unsliced
    output when ``source`` is None (its own figures then go into its row). Each result is
    recorded in its output."""
    rows = list(report.rows)
    if source is None:  # the first row is the unsliced source in the outputs' format
        source, rows = rows[0].dir, rows[1:]
    with TokenProgress(enabled=show) as bar:
        ev = evaluate([row.dir for row in rows], source, settings, progress=bar)
    done = []
    if len(rows) < len(report.rows):
        done.append(replace(report.rows[0], eval=record(report.rows[0].dir, ev, ev.source)))
    for row, result in zip(rows, ev.slices):
        done.append(replace(row, eval=record(row.dir, ev, result)))
        interrupts.set_note(f"the {len(report.rows)} outputs in {report.output_dir} are complete; "
                            f"{len(done)} hold their evaluation")
    return replace(report, rows=done)


def _eval_cells(e: dict | None) -> tuple[str, ...]:
    if not e:
        return ("-",) * 5
    return (f"{e['perplexity']:.3f}", fmt_kl(e["kl_mean"]), fmt_kl(e["kl_p99"]), f"{100 * e['top1_agreement']:.1f}%", f"{e['tokens_per_second']:.1f}")


def _repos(template: str | None, presets) -> dict[str, str]:
    if not template:
        return {}
    if "{slug}" not in template:
        raise click.UsageError("--push-to-hub for bulk needs {slug} in the repo name, e.g. me/gemma-3n-{slug}")
    repos = {p.slug: template.replace("{slug}", p.slug) for p in presets}
    for repo in repos.values():
        hub.check_repo_id(repo)
    return repos


def render_bulk(r: BulkReport) -> str:
    head = ("preset", "layers", "effective", "total", "size", "written", "time", "status")
    rows = [
        (x.slug, str(x.layers), fmt_params(x.params["effective"]), fmt_params(x.params["total"]), fmt_bytes(x.bytes),
         fmt_bytes(x.written), f"{x.seconds:.1f} s", x.status + (f" ({x.reason})" if x.status in ("replaced", "skipped") and x.reason else ""))
        for x in r.rows
    ]
    evaluated = [x.eval for x in r.rows if x.eval]
    if evaluated:
        head = head[:-1] + ("perplexity", "KL mean", "KL p99", "top-1", "tokens/s") + head[-1:]
        rows = [row[:-1] + _eval_cells(x.eval) + row[-1:] for row, x in zip(rows, r.rows)]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    right = set(range(1, len(head) - 1))
    fmt = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()  # noqa: E731
    lines = [fmt(head)] + [fmt(row) for row in rows]
    total = sum(x.bytes for x in r.rows)
    verb = "would write" if r.dry_run else "wrote"
    saved = r.bytes_if_independent - r.bytes_written
    lines.append("")
    lines.append(
        f"{len(r.rows)} outputs in {r.output_dir}: {fmt_bytes(total)} of files; {verb} {fmt_bytes(r.bytes_written)} of shards "
        f"({fmt_bytes(r.bytes_if_independent)} if written independently, {fmt_bytes(saved)} saved"
        f"{'' if r.dedupe else '; --no-dedupe'}) in {r.seconds:.1f} s"
    )
    lines.append("'written' counts a shard file shared by several outputs once, for the first output that needed it.")
    if evaluated:
        e = evaluated[0]
        kept = ("next to each file, in <file>.gslice-eval.json" if any(x.dir.endswith(".gguf") for x in r.rows)
                else "in each output's manifest and model card")
        lines.append(f"Evaluated against {e['against']['path']} (perplexity {e['against']['perplexity']:.3f}), {e['measured_on']}; "
                     f"KL(source || output) over the source's top tokens. Recorded {kept}.")
    if r.download and r.dry_run:
        lines.append(r.download["line"])
    lines += [f"{k}: {v}" for k, v in download_rows(r.download)]
    return "\n".join(lines)
