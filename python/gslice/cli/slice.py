"""`gslice slice`: cut a checkpoint by layers to skip and FFN widths, optionally quantizing it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import gemma3n, hub, interrupts
from ..errors import HubError, SpecError
from ..progress import ByteProgress
from ..formats import gguf, mlx
from ..formats.base import Format
from ..formats.safetensors import DEFAULT_GROUP_SIZE, GROUP_SIZES, SCHEMES, QuantOptions, Safetensors
from ..slicing import SliceReport, output_target, prepare_slice, write_slice
from ..sources import resolve_source
from ..spec import SliceSpec, load_spec_file, parse_ffn_dims, parse_index_list, parse_int
from ..units import fmt_bytes, fmt_params, parse_size
from ..arguments import MAX_THREADS
from . import main
from .common import compact_ranges, download_rows, file_listing, friendly_errors, full_download_option, run_lengths, runtime_lines, table, StrictInt


def spec_from_options(layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip="", drop_vision=False, drop_audio=False, text_only=False, preset=None) -> SliceSpec:
    """The spec from command-line options; with --preset, only its tower options."""
    if preset and (spec_file or layers_to_skip or ffn_dims):
        raise SpecError("give either --preset or --layers-to-skip/--ffn-dims/--spec, not both")
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


def format_option_decorators(fn):
    """--format, --gguf-type, --imatrix, --mlx-bits, --mlx-group-size, --quant, --group-size,
    --quant-embeddings and --quant-audio (shared with `gslice bulk`)."""
    for option in reversed(_FORMAT_OPTIONS):
        fn = option(fn)
    return fn


_FORMAT_OPTIONS = [
    click.option("--format", "fmt", type=click.Choice(["safetensors", "gguf", "mlx"]), default=None,
                 help="safetensors (default): a Hugging Face checkpoint folder; gguf: one file for llama.cpp "
                      "(the text decoder only, -o names the file); mlx: a folder for mlx-lm (the text decoder "
                      "only, as mlx_lm.convert writes it)."),
    click.option("--gguf-type", default=None, metavar="|".join(gguf.TYPES),
                 help="With --format gguf: the file type (default: the source's dtype). f32/bf16/f16/q8_0 as "
                      "llama.cpp's converter writes them; q6_k, q5_k_m, q4_k_m (Ollama's and LM Studio's "
                      "default), q4_0 and the pure q5_k, q4_k as its quantizer (llama-quantize) makes them, "
                      "each tensor at the type llama.cpp chooses for it."),
    click.option("--imatrix", default=None, metavar="FILE",
                 help="With a quantizer --gguf-type: an importance matrix of llama.cpp's imatrix tool (GGUF or "
                      "legacy .dat) computed on the source model, used as llama-quantize --imatrix uses it."),
    click.option("--mlx-bits", default=None, metavar="|".join(map(str, mlx.BITS)),
                 help="With --format mlx: quantize as mlx_lm.convert -q does (MLX affine; default: the source's dtype)."),
    click.option("--mlx-group-size", default=None, metavar="|".join(map(str, mlx.GROUP_SIZES)),
                 help=f"With --mlx-bits: values per scale and bias (default {mlx.DEFAULT_GROUP_SIZE})."),
    click.option("--quant", default=None, metavar="|".join(SCHEMES),
                 help="Quantize the text decoder's Linear weights group-wise (compressed-tensors pack-quantized)."),
    click.option("--group-size", default=None, metavar="|".join(map(str, GROUP_SIZES)),
                 help=f"Columns per quantization scale (default {DEFAULT_GROUP_SIZE})."),
    click.option("--quant-embeddings", is_flag=True,
                 help="Also quantize the per-layer embedding table (transformers then loads the output only "
                      "with CompressedTensorsConfig(dequantize=True))."),
    click.option("--quant-audio", is_flag=True, help="Also quantize the audio tower's Linear weights."),
]


@main.command("slice")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, help="Output folder (must not exist unless --overwrite).")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub source (default: main).")
@click.option("--preset", default=None, help="A preset id or name (see `gslice presets`); exact match.")
@click.option("--layers-to-skip", default="", help="Decoder layers to drop: '20,21,22' or '20-24'.")
@click.option("--ffn-dims", default=None, help="FFN width for every kept layer ('8192'), or one per kept layer.")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False), help="JSON file with layers_to_skip / ffn_dims.")
@click.option("--audio-layers-to-skip", default="", help="Audio Conformer blocks to drop, e.g. '8-11'.")
@click.option("--audio-ffn-dim", type=StrictInt(1), default=None, help="Refused: the audio FFN width is fixed at 4 x hidden size.")
@click.option("--drop-vision", is_flag=True, help="Remove the vision tower and its embedder.")
@click.option("--drop-audio", is_flag=True, help="Remove the audio tower and its embedder.")
@click.option("--text-only", is_flag=True, help="Remove both towers; the output loads as Gemma3nForCausalLM.")
@format_option_decorators
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option("--threads", type=StrictInt(1, MAX_THREADS), default=None, help="Worker threads (default: all cores).")
@click.option("--push-to-hub", "push_repo", default=None, metavar="REPO", help="Upload the output to this Hub model repo (created if needed).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo as private.")
@click.option("--dry-run", is_flag=True, help="Validate and print the files (and upload) that would be made; write nothing.")
@click.option("--hash-source", is_flag=True, help="Record the SHA-256 of every source shard in the manifest (reads the whole source).")
@full_download_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
@friendly_errors
def slice_cmd(src, out, revision, preset, layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, audio_ffn_dim, drop_vision, drop_audio,
              text_only, fmt, gguf_type, imatrix, mlx_bits, mlx_group_size, quant, group_size, quant_embeddings, quant_audio,
              overwrite, max_shard_size, threads,
              push_repo, private, dry_run, hash_source, full_download, as_json, quiet):
    """Slice SRC (a checkpoint folder or a Hub repo id) into OUT, by --preset or by layers and widths."""
    if audio_ffn_dim is not None:
        raise gemma3n.audio_ffn_refusal(audio_ffn_dim)
    spec = spec_from_options(layers_to_skip, ffn_dims, spec_file, audio_layers_to_skip, drop_vision, drop_audio, text_only, preset)
    out_format = format_options(fmt, gguf_type, quant, group_size, quant_embeddings, quant_audio, mlx_bits, mlx_group_size,
                                imatrix)
    shard_size = parse_size(max_shard_size, "--max-shard-size")
    if push_repo:
        if out_format.name == "gguf":
            raise SpecError("--push-to-hub uploads checkpoint folders; upload a GGUF file with huggingface_hub's upload_file")
        hub.check_repo_id(push_repo)
    source = resolve_source(src, revision, full_download=full_download, weights=not dry_run)
    plan = prepare_slice(source, spec, preset=preset, format=out_format)
    output_target(plan, out, overwrite=overwrite)  # a refused output path fails before the Hub is asked
    if push_repo and not dry_run:
        hub.create_repo(push_repo, private=private)  # fails in seconds on a missing login, before the slice
    show = not (quiet or as_json or dry_run)
    with ByteProgress("hashing source", enabled=show) as hashing, ByteProgress("downloading", enabled=show) as fetch_bar, \
            ByteProgress("writing", enabled=show) as bar:
        report = write_slice(plan, out, overwrite=overwrite, max_shard_size=shard_size, threads=threads, progress=bar,
                             dry_run=dry_run, hash_source=hash_source, hash_progress=hashing, download_progress=fetch_bar)
    if not dry_run:
        interrupts.set_note(f"the output {report.output} is complete")
    if not quiet:
        for line in report.leftovers:
            click.echo(f"note: {line}", err=True)
    pushed = None
    if push_repo and not dry_run:
        pushed = upload_output(Path(report.output), push_repo, f"Upload a Gemma 3n slice of {plan.source.label} made with gslice")
    if as_json:
        d = report.to_dict()
        if push_repo:
            d["hub"] = {"repo": push_repo, "private": private, "url": pushed, "uploaded": pushed is not None}
        click.echo(json.dumps(d, indent=2))
    elif dry_run:
        click.echo(render_dry_run(report, push_repo, private))
    elif not quiet:
        extra = [("uploaded", pushed)] if pushed else []
        click.echo(render_report(report, extra))


def upload_output(folder: Path, repo: str, message: str) -> str:
    """Uploads a finished output; an interruption or a failure says the output is on disk."""
    kept = f"the output {folder} is complete on disk (`gslice push {folder} {repo}` uploads it)"
    interrupts.set_note(f"the upload to {repo} was stopped (the Hub applies an upload as one commit, at its end); {kept}")
    try:
        return hub.upload_folder(folder, repo, commit_message=message)
    except HubError as e:
        raise HubError(f"{e}; {kept}") from None


def render_dry_run(r: SliceReport, repo: str | None, private: bool) -> str:
    p = r.params
    head = [
        ("source", r.source),
        ("layers", f"{r.layers} of {r.source_layers}"),
        ("parameters", f"effective {fmt_params(p['effective'])}, total {fmt_params(p['total'])}"),
    ]
    if r.format and r.format["name"] in ("gguf", "mlx"):
        head.append(("note", r.format["note"]))
    where = f"dry run: would write {r.output}"
    if repo:
        where += f" and upload it to {hub.repo_url(repo)}" + (" (private)" if private else "")
    listing = table(head) + "\n" + file_listing(r.files, where + ":")
    return listing + (f"\n{r.download['line']}" if r.download else "")


def format_options(fmt, gguf_type, quant, group_size, quant_embeddings, quant_audio, mlx_bits=None, mlx_group_size=None,
                   imatrix=None) -> Format:
    """The output format the command-line options describe."""
    safetensors_only = [f for f, v in (("--quant", quant), ("--group-size", group_size), ("--quant-embeddings", quant_embeddings),
                                       ("--quant-audio", quant_audio)) if v]
    for flag, value in (("--gguf-type", gguf_type), ("--imatrix", imatrix)):
        if fmt != "gguf" and value is not None:
            raise SpecError(f"{flag} needs --format gguf")
    if fmt != "mlx" and (mlx_bits, mlx_group_size) != (None, None):
        raise SpecError(f"{'--mlx-bits' if mlx_bits is not None else '--mlx-group-size'} needs --format mlx")
    if fmt == "gguf":
        if safetensors_only:
            raise SpecError(f"{safetensors_only[0]} applies to --format safetensors; a GGUF file's type is --gguf-type ({', '.join(gguf.TYPES)})")
        return gguf.GGUF(gguf_type, imatrix)
    if fmt == "mlx":
        if safetensors_only:
            raise SpecError(f"{safetensors_only[0]} applies to --format safetensors; an MLX folder is quantized with "
                            f"--mlx-bits {' or '.join(map(str, mlx.BITS))}")
        if mlx_bits is None and mlx_group_size is not None:
            raise SpecError(f"--mlx-group-size needs --mlx-bits {' or '.join(map(str, mlx.BITS))}")
        bits = _choice(mlx_bits, "--mlx-bits", mlx.BITS)
        return mlx.MLX(bits, _choice(mlx_group_size, "--mlx-group-size", mlx.GROUP_SIZES))
    return Safetensors.of(quant_options(quant, group_size, quant_embeddings, quant_audio))


def _choice(token, what: str, choices) -> int | None:
    if token is None:
        return None
    value = parse_int(token, what)
    if value not in choices:
        raise SpecError(f"{what}: {value} is not supported (choose {', '.join(map(str, choices))})")
    return value


def quant_options(quant, group_size, quant_embeddings, quant_audio) -> QuantOptions | None:
    if quant is None:
        given = [f for f, v in (("--group-size", group_size), ("--quant-embeddings", quant_embeddings),
                                ("--quant-audio", quant_audio)) if v]
        if given:
            raise SpecError(f"{given[0]} needs --quant int4 or --quant int8")
        return None
    if group_size is not None:
        group_size = parse_int(group_size, "--group-size")
    return QuantOptions.build(quant, group_size, quant_embeddings, quant_audio)


def quant_rows(q: dict) -> list[tuple[str, str]]:
    n = len(q["tensors"])
    if n == 0:
        return [("quantization", f"{q['scheme']}, groups of {q['group_size']}: no weight was quantized")]
    before, after = q["quantized_bytes_before"], q["quantized_bytes_after"]
    if q["format"] == "mlx":
        label = f"{q['bits']}-bit MLX affine, groups of {q['group_size']}, BF16 scales and biases (as mlx_lm.convert -q)"
    else:
        label = f"{q['scheme']}, groups of {q['group_size']}, BF16 scales ({q['format']}, compressed-tensors)"
    rows = [
        ("quantization", label),
        ("quantized", f"{n:,} weights: {fmt_bytes(before)} -> {fmt_bytes(after)} (x{before / max(after, 1):.2f}); "
                      f"output {fmt_bytes(q['output_bytes_unquantized'])} -> {fmt_bytes(q['output_bytes'])}"),
        ("quant error", f"RMS error / weight RMS: mean {q['rel_rms_error_mean']:.4f}, worst {q['rel_rms_error_max']:.4f} "
                        f"({q['rel_rms_error_worst']}); max abs error / weight RMS: worst {q['rel_max_abs_error_max']:.3f}"),
    ]
    if q["kept"]:
        reasons = sorted({k["reason"] for k in q["kept"]})
        rows.append(("kept unquantized", f"{len(q['kept'])} targets ({'; '.join(reasons)})"))
    return rows


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
        ("tensors", f"{r.tensors:,} in one GGUF file" if r.format and r.format["name"] == "gguf"
                    else f"{r.tensors:,} in {len(r.shards)} shard{'s' if len(r.shards) != 1 else ''}"),
        ("written", f"{fmt_bytes(r.bytes_written)} in {r.seconds:.1f} s "
                    f"({fmt_bytes(r.bytes_written / max(r.seconds, 1e-9))}/s, "
                    + (f"{fmt_bytes(r.bytes_kernel_copied)} copied in-kernel)" if r.io == "linux-fast" else "portable I/O)")),
    ]
    if r.audio_blocks is not None:
        rows.insert(5, ("audio blocks", str(r.audio_blocks)))
    if r.preset:
        rows.insert(2, ("preset", r.preset))
    rows += download_rows(r.download)
    if r.size:
        rows += size_summary_rows(r.size)
        rows.append(("runtimes", f"computed correctly by: {r.size['runtimes']['summary']}"))
    if r.quantization is not None:
        rows += quant_rows(r.quantization)
    if r.format and r.format["name"] == "gguf":
        rows += gguf_rows(r.format)
    if r.format and r.format["name"] == "mlx":
        rows += mlx_rows(r.format)
    failing = runtime_lines(r.size["runtimes"], failing_only=True) if r.size else []
    return "\n".join([table(rows + list(extra_rows))] + failing)


def gguf_rows(f: dict) -> list[tuple[str, str]]:
    types = ", ".join(f"{t} x {n}" for t, n in f["tensor_types"].items())
    rows = [("GGUF", f"file type {f['type']} (general.file_type {f['file_type']}); {f['tensors']} tensors: {types}")]
    if m := f.get("imatrix"):
        without = m["tensors_without"]
        rows.append(("imatrix", f"{m['file']} ({m['entries']} entries): {m['tensors_with']} tensors quantized with it"
                                + (f", {len(without)} without an entry ({', '.join(without[:3])}{', ...' if len(without) > 3 else ''})"
                                   if without else "")))
    return rows + [("note", f["note"])]


def mlx_rows(f: dict) -> list[tuple[str, str]]:
    weights = f"{f['dtype']} weights" if f["bits"] is None else f"{f['bits']}-bit affine, groups of {f['group_size']}"
    rows = [("MLX", f"{weights}; {f['tensors']} tensors, {fmt_params(f['params'])} parameters; "
                    f"run with: mlx_lm.generate --model <output> --prompt ...")]
    if f["kv_copied_from_producer"]:
        rows.append(("KV-sharing k/v", f"layers {compact_ranges(f['kv_copied_from_producer'])}: copies of their KV "
                                        "producer's (the source has none; mlx-lm never reads them with its cache)"))
    return rows + [("note", f["note"])]


def size_summary_rows(size: dict) -> list[tuple[str, str]]:
    """Disk and RAM per storage scheme (the figures of `gslice plan`)."""
    rows = []
    for scheme, f in size["footprints"].items():
        rows.append((f"as {scheme}", f"disk {fmt_bytes(f['disk_bytes'])}; RAM at {size['context']} tokens "
                                           f"{fmt_bytes(f['ram_bytes'])} ({fmt_bytes(f['ram_ple_on_disk_bytes'])} with the PLE table on disk)"))
    return rows
