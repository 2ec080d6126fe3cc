"""The `gslice` command line: a thin layer over the public API.

Errors print one line after ``error:`` and exit 2; ``--json`` prints a machine-readable report
on stdout (progress bars go to stderr).
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import click

from . import __version__, gemma3n
from .errors import GsliceError, SpecError
from .progress import ByteProgress
from .slicing import SliceReport, prepare_slice, write_slice
from .sources import resolve_source
from .spec import SliceSpec, load_spec_file, parse_ffn_dims, parse_index_list
from .units import fmt_bytes, fmt_params, parse_size


def friendly_errors(fn):
    """Bad input ends in one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GsliceError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was left behind", err=True)
            sys.exit(130)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gslice")
def main() -> None:
    """Cut smaller models out of Gemma 3n checkpoints (MatFormer slicing), streaming."""


# -- slice --------------------------------------------------------------------------------


def spec_from_options(layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip="", drop_vision=False, drop_audio=False, text_only=False) -> SliceSpec:
    if spec_file and (layers_to_skip or ffn_dims):
        raise SpecError("give either --spec or --layers-to-skip/--ffn-dims, not both")
    if spec_file:
        base = load_spec_file(spec_file)
    else:
        base = SliceSpec(
            layers_to_skip=parse_index_list(layers_to_skip or "", "--layers-to-skip"),
            ffn_dims=parse_ffn_dims(ffn_dims) if ffn_dims else None,
        )
    return SliceSpec(
        layers_to_skip=base.layers_to_skip,
        ffn_dims=base.ffn_dims,
        audio_layers_to_skip=base.audio_layers_to_skip
        or parse_index_list(audio_layers_to_skip or "", "--audio-layers-to-skip"),
        drop_vision=base.drop_vision or drop_vision or text_only,
        drop_audio=base.drop_audio or drop_audio or text_only,
    )


@main.command("slice")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, help="Output folder (must not exist unless --overwrite).")
@click.option("--layers-to-skip", default="", help="Decoder layers to drop: '20,21,22' or '20-24'.")
@click.option("--ffn-dims", default=None, help="FFN width for every kept layer ('8192'), or one per kept layer.")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False), help="JSON file with layers_to_skip / ffn_dims.")
@click.option("--audio-layers-to-skip", default="", help="Audio Conformer blocks to drop, e.g. '8-11'.")
@click.option("--audio-ffn-dim", type=int, default=None, help="Refused: the audio FFN width is fixed (see docs).")
@click.option("--drop-vision", is_flag=True, help="Remove the vision tower and its embedder.")
@click.option("--drop-audio", is_flag=True, help="Remove the audio tower and its embedder.")
@click.option("--text-only", is_flag=True, help="Remove both towers; the output loads as Gemma3nForCausalLM.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
@friendly_errors
def slice_cmd(src, out, layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, audio_ffn_dim, drop_vision, drop_audio, text_only, overwrite, max_shard_size, threads, as_json, quiet):
    """Slice SRC (a Gemma 3n checkpoint folder) into OUT."""
    if audio_ffn_dim is not None:
        raise gemma3n.audio_ffn_refusal(audio_ffn_dim)
    spec = spec_from_options(layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, drop_vision, drop_audio, text_only)
    shard_size = parse_size(max_shard_size, "--max-shard-size")
    plan = prepare_slice(resolve_source(src), spec)
    with ByteProgress("writing", enabled=not (quiet or as_json)) as bar:
        report = write_slice(plan, out, overwrite=overwrite, max_shard_size=shard_size, threads=threads, progress=bar)
    if as_json:
        click.echo(report.to_json())
    elif not quiet:
        click.echo(render_report(report))


def render_report(r: SliceReport, extra_rows=()) -> str:
    p, sp = r.params, r.source_params
    skipped = r.spec["layers_to_skip"]
    rows = [
        ("source", r.source),
        ("output", r.output),
        ("layers", f"{r.layers} of {r.source_layers}" + (f" (skipped {compact_ranges(skipped)})" if skipped else "")),
        ("FFN widths", run_lengths(r.ffn_dims)),
        ("KV sharing", f"last {r.num_kv_shared_layers} layers reuse earlier keys/values"),
        ("parameters", f"effective {fmt_params(p['effective'])} (was {fmt_params(sp['effective'])}), "
                       f"text {fmt_params(p['text'])}, total {fmt_params(p['total'])}"),
        ("tensors", f"{r.tensors:,} in {len(r.shards)} shard{'s' if len(r.shards) != 1 else ''}"),
        ("written", f"{fmt_bytes(r.bytes_written)} in {r.seconds:.1f} s "
                    f"({fmt_bytes(r.bytes_written / max(r.seconds, 1e-9))}/s, {fmt_bytes(r.bytes_kernel_copied)} copied in-kernel)"),
    ]
    if r.audio_blocks is not None:
        rows.insert(5, ("audio blocks", str(r.audio_blocks)))
    return table(rows + list(extra_rows))


def table(rows) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_lengths(values) -> str:
    out, prev, n = [], None, 0
    for v in list(values) + [None]:
        if v == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev} x {n}" if n > 1 else str(prev))
        prev, n = v, 1
    return ", ".join(out)


def compact_ranges(xs) -> str:
    xs = sorted(xs)
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"{xs[i]}-{xs[j]}" if j > i else str(xs[i]))
        i = j + 1
    return ",".join(parts)


# -- info ---------------------------------------------------------------------------------


@main.command("info")
@click.argument("src")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@friendly_errors
def info_cmd(src, as_json):
    """Describe a Gemma 3n checkpoint: layers, widths, KV sharing, towers, sizes."""
    from .inspection import describe

    info = describe(resolve_source(src))
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
    return table(rows)


# -- demo ---------------------------------------------------------------------------------


@main.command("demo")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the files in this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def demo_cmd(keep, as_json):
    """Slice a tiny built-in Gemma 3n checkpoint (E4B layout) with the E2B config and verify it."""
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="gslice-demo-") as tmp:
        workdir = Path(keep) if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with ByteProgress("writing", enabled=not as_json) as bar:
            result = run_demo(workdir, progress=bar)
        if as_json:
            click.echo(json.dumps({**result.report.to_dict(), "verified": result.ok, "problems": list(result.problems)}, indent=2))
        else:
            verdict = (f"all {result.tensors_checked} tensors byte-identical to an independent numpy slice; config checked"
                       if result.ok else f"{len(result.problems)} problems: " + "; ".join(result.problems[:5]))
            click.echo(render_report(result.report, [("verified", verdict)]))
    if not result.ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
