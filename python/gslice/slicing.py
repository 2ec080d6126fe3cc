"""Slicing a Gemma 3n checkpoint, optionally quantizing it in the same pass: plan (validate
everything, write nothing), then execute."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__, accounting, engine, gemma3n, ownership, quantization, staging
from .arguments import ArgumentError, bool_arg, callback_arg, int_arg, optional_str, path_arg, threads_arg
from .catalogue import spec_with_preset
from .engine import CheckpointInfo, EngineReport, TensorPlan
from .errors import SourceError
from .gemma3n import Architecture, ParamCounts, QuantPlan, Resolved
from .quantization import QuantOptions
from .sources import Source, resolve_source
from .spec import SliceSpec
from .system import check_output_path


@dataclass(frozen=True)
class SlicePlan:
    """A validated slice: every output tensor, its operation and shape, and the new config."""

    source: Source
    config: dict
    arch: Architecture
    resolved: Resolved
    checkpoint: CheckpointInfo
    tensors: tuple[TensorPlan, ...]
    new_config: dict
    preset: str | None = None  # the preset id the spec came from
    quant: QuantOptions | None = None
    quant_plan: QuantPlan | None = None

    @property
    def spec(self) -> SliceSpec:
        return self.resolved.spec

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every output weight's shape before quantization, under its unquantized name."""
        src = self.checkpoint.tensors
        return {t.weight_name: engine.output_shape(src[t.source].shape, t.op) for t in self.tensors}

    def output_bytes(self) -> int:
        """Tensor bytes of the output as written (quantized tensors at their packed size)."""
        src = self.checkpoint.tensors
        return sum(t.nbytes(src[t.source].shape, src[t.source].dtype) for t in self.tensors)

    def unquantized_bytes(self) -> int:
        """Tensor bytes the same slice takes without quantization."""
        src = self.checkpoint.tensors
        return sum(
            math.prod(engine.output_shape(src[t.source].shape, t.op)) * engine.DTYPE_SIZES[src[t.source].dtype]
            for t in self.tensors
        )

    def config_text(self) -> str:
        """config.json as written into the output (and re-derived by `gslice verify`)."""
        return json.dumps(self.new_config, indent=2) + "\n"

    def params(self) -> ParamCounts:
        return gemma3n.count_params(self.output_shapes(), gemma3n.output_prefix(self.arch, self.spec))

    def source_params(self) -> ParamCounts:
        shapes = {n: t.shape for n, t in self.checkpoint.tensors.items()}
        return gemma3n.count_params(shapes, self.arch.prefix)


def prepare_slice(
    src: str | os.PathLike | Source,
    spec: SliceSpec | None = None,
    *,
    preset: str | None = None,
    revision: str | None = None,
    quant: QuantOptions | None = None,
) -> SlicePlan:
    """Checks the spec (or the preset, with the spec's tower options) and the quantization
    against the source's config and tensors. Raises before any write. ``src`` may be a folder
    or a Hub repo id (fetched into the Hugging Face cache)."""
    if quant is not None and not isinstance(quant, QuantOptions):
        raise ArgumentError(f"quant must be a QuantOptions or None, not {type(quant).__name__}")
    source = src if isinstance(src, Source) else resolve_source(path_arg(src, "src"), optional_str(revision, "revision"))
    config = gemma3n.read_config(source.path)
    if "quantization_config" in config:
        raise SourceError(
            f"{source.path / 'config.json'} has a quantization_config: the source is already quantized; "
            "gslice reads unquantized (BF16, F16, F32) checkpoints"
        )
    arch = gemma3n.architecture(config, str(source.path / "config.json"))
    spec, found = spec_with_preset(arch, spec, preset)
    resolved = gemma3n.resolve(arch, spec)
    ck = engine.inspect(source.path)
    gemma3n.check_source(config, arch, ck, resolved)
    tensors = tuple(gemma3n.plan_tensors(arch, ck, resolved))
    new_config = gemma3n.rewrite_config(config, arch, resolved)
    qplan = None
    if quant is not None:
        qplan = gemma3n.plan_quantization(arch, ck, resolved, tensors, quant)
        tensors = qplan.tensors
        new_config["quantization_config"] = quantization.quantization_config(quant, qplan.ignore, qplan.extra_targets)
    return SlicePlan(source, config, arch, resolved, ck, tensors, new_config, found.id if found else None, quant, qplan)


@dataclass(frozen=True)
class SliceReport:
    """What a slice wrote, for people (``gslice slice``'s table) and machines (``--json``)."""

    source: str
    output: str
    spec: dict
    source_layers: int
    layers: int
    ffn_dims: list[int]
    num_kv_shared_layers: int
    audio_blocks: int | None
    params: dict
    source_params: dict
    tensors: int
    shards: list[str]
    tensor_bytes: int
    bytes_written: int
    bytes_kernel_copied: int
    seconds: float
    io: str  # how the engine moved bytes: "linux-fast" or "portable" (GSLICE_PORTABLE_IO=1)
    files: list[dict] = field(default_factory=list)  # every file of the output: name, bytes, sha256
    dry_run: bool = False
    # None without quantization; see quantization_summary.
    quantization: dict | None = None
    tool: str = field(default=f"gslice {__version__}")
    preset: str | None = None
    size: dict | None = None  # accounting.SizePlan.to_dict(): parameters, disk and RAM per scheme
    # gslice's temporary folders found beside the output: stale ones removed, live ones left
    leftovers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def slice_model(
    src: str | os.PathLike | Source,
    out: str | os.PathLike,
    *,
    spec: SliceSpec | None = None,
    preset: str | None = None,
    layers_to_skip=None,
    ffn_dims=None,
    audio_layers_to_skip=None,
    drop_vision: bool = False,
    drop_audio: bool = False,
    text_only: bool = False,
    overwrite: bool = False,
    max_shard_size: int = engine.DEFAULT_MAX_SHARD_SIZE,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    revision: str | None = None,
    quant: str | None = None,
    group_size: int | None = None,
    quant_embeddings: bool = False,
    quant_audio: bool = False,
) -> SliceReport:
    """Slices ``src`` (a folder or a Hub repo id) into ``out``. Give a ``spec``, or its fields
    as keywords, or a ``preset`` id or name (with the tower keywords).

    ``quant="int4"`` or ``"int8"`` also quantizes the text decoder's Linear weights group-wise
    (``group_size`` 32, 64 or 128, default 128) in compressed-tensors' pack-quantized format;
    ``quant_embeddings`` adds the per-layer embedding table, ``quant_audio`` the audio tower's
    Linear weights. The target list is in :mod:`gslice.gemma3n`."""
    out = path_arg(out, "out")
    flags = dict(drop_vision=drop_vision, drop_audio=drop_audio, text_only=text_only, overwrite=overwrite,
                 quant_embeddings=quant_embeddings, quant_audio=quant_audio)
    for name, value in flags.items():
        bool_arg(value, name)
    max_shard_size = int_arg(max_shard_size, "max_shard_size")
    threads = threads_arg(threads)
    callback_arg(progress, "progress")
    opts = QuantOptions.build(quant, group_size, quant_embeddings, quant_audio)
    if spec is None:
        spec = SliceSpec.build(
            layers_to_skip=layers_to_skip,
            ffn_dims=ffn_dims,
            audio_layers_to_skip=audio_layers_to_skip,
            drop_vision=drop_vision,
            drop_audio=drop_audio,
            text_only=text_only,
        )
    elif (layers_to_skip, ffn_dims, audio_layers_to_skip) != (None, None, None) or drop_vision or drop_audio or text_only:
        raise ArgumentError("give either spec or its fields (layers_to_skip, ffn_dims, ...), not both")
    plan = prepare_slice(src, spec, preset=preset, revision=revision, quant=opts)
    return write_slice(plan, out, overwrite=overwrite, max_shard_size=max_shard_size, threads=threads, progress=progress)


def output_plan(
    plan: SlicePlan,
    out: str | os.PathLike,
    *,
    source_record: dict,
    overwrite: bool = False,
    max_shard_size: int = engine.DEFAULT_MAX_SHARD_SIZE,
    preset: dict | None = None,
) -> engine.OutputPlan:
    """The engine's view of one output folder: tensors, config, model card, copied files and
    the manifest (``source_record`` from :func:`gslice.manifest.source_record`)."""
    from .manifest import manifest
    from .modelcard import model_card

    folder = Path(out).expanduser().absolute()
    output = engine.OutputPlan(
        dir=folder,
        tensors=list(plan.tensors),
        text_files={
            "config.json": plan.config_text(),
            "README.md": model_card(plan, title=preset["name"] if preset else None),
        },
        copied_files=gemma3n.files_to_copy(plan.source.path, plan.spec),
        overwrite=overwrite,
        manifest=manifest(plan, source_record, preset, max_shard_size),
    )
    names = [*output.text_files, *output.copied_files, output.manifest.name, *engine.SHARD_NAME_EXAMPLES]
    check_output_path(folder, names)
    return output


def write_slice(
    plan: SlicePlan,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    max_shard_size: int = engine.DEFAULT_MAX_SHARD_SIZE,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
    hash_source: bool = False,
    hash_progress: Callable[[int, int], None] | None = None,
) -> SliceReport:
    """Writes the slice (with its manifest) atomically; ``dry_run`` reports the files without
    writing. ``hash_source`` records the SHA-256 of every source shard (a full read, followed
    by ``hash_progress``). Everything that can fail (the output path's ownership, the report's
    figures) runs before the first byte is written; stale temporary folders a killed run left
    beside the output are removed just before writing, live ones are left alone."""
    from .manifest import source_record

    started = time.perf_counter()
    target = output_target(plan, out, overwrite=overwrite)
    record = source_record(plan.source, plan.checkpoint.shards, hash_source=hash_source and not dry_run, progress=hash_progress)
    output = output_plan(plan, target, source_record=record, overwrite=overwrite, max_shard_size=max_shard_size)
    figures = _figures(plan)
    leftovers = [f.describe(dry_run) for f in staging.clear(target.parent, dry_run=dry_run)]
    result = engine.execute(
        plan.source.path, [output], max_shard_size=max_shard_size, threads=threads, progress=progress, dry_run=dry_run
    )
    return slice_report(plan, figures, result, result.outputs[0], time.perf_counter() - started, leftovers)


def output_target(plan: SlicePlan, out: str | os.PathLike, *, overwrite: bool) -> Path:
    """The path to write ``out`` to, once :func:`gslice.ownership.check_output` allows it."""
    return ownership.check_output(out, overwrite=overwrite, source=plan.source.path, protected=source_files(plan))


def source_files(plan: SlicePlan) -> list[Path]:
    """Every file of the source that slicing reads (they may be links into a Hub cache)."""
    return [*plan.checkpoint.shards, plan.source.path / "config.json", *gemma3n.files_to_copy(plan.source.path, plan.spec).values()]


def _figures(plan: SlicePlan) -> dict:
    """The report's fields that depend on the plan alone, computed before anything is written."""
    return dict(
        source=plan.source.label,
        spec=plan.spec.to_json(),
        source_layers=plan.arch.num_layers,
        layers=len(plan.resolved.kept),
        ffn_dims=list(plan.resolved.widths),
        num_kv_shared_layers=gemma3n.text_config(plan.new_config)["num_kv_shared_layers"],
        audio_blocks=len(plan.resolved.audio_kept) if plan.resolved.audio_kept and not plan.spec.drop_audio else None,
        params=asdict(plan.params()),
        source_params=asdict(plan.source_params()),
        preset=plan.preset,
        size=size_plan_of(plan).to_dict(),
        quantization=_quantization_figures(plan),
    )


def slice_report(plan: SlicePlan, figures: dict, result: engine.EngineReport, written: engine.OutputReport,
                 seconds: float, leftovers: list[str]) -> SliceReport:
    """The report from the plan's figures and what the engine did: nothing here can fail."""
    quant = figures.pop("quantization")
    return SliceReport(
        **figures,
        output=str(written.dir),
        tensors=written.tensors,
        shards=[s.name for s in written.shards],
        tensor_bytes=written.tensor_bytes,
        bytes_written=result.bytes_written,
        bytes_kernel_copied=result.bytes_kernel_copied,
        seconds=seconds,
        io=result.io,
        files=[asdict(f) for f in written.files],
        dry_run=result.dry_run,
        quantization=quantization_summary(plan, quant, result),
        leftovers=leftovers,
    )


def size_plan_of(plan: SlicePlan, context: int | None = None) -> accounting.SizePlan:
    """Parameters, disk and RAM figures of a prepared slice (see :mod:`gslice.accounting`)."""
    return accounting.size_plan(
        plan.source.label, plan.preset, plan.arch, plan.resolved, plan.output_shapes(), plan.new_config,
        context or accounting.DEFAULT_CONTEXT,
    )


def _quantization_figures(plan: SlicePlan) -> dict | None:
    if plan.quant is None:
        return None
    return {
        **plan.quant.to_json(),
        "kept": [{"name": n, "reason": r} for n, r in plan.quant_plan.kept],
        "output_bytes_unquantized": plan.unquantized_bytes(),
        "weight_of": {t.name: t.quant.weight for t in plan.tensors if t.quant},
    }


def quantization_summary(plan: SlicePlan, figures: dict | None, result: EngineReport) -> dict | None:
    """Per quantized tensor: sizes and errors (``q * scale`` against the sliced source; the
    ``rel_`` figures are relative to the weight's RMS). Totals over the whole output; the
    error figures are None when nothing was quantized (a dry run)."""
    if figures is None:
        return None
    weight_of = figures.pop("weight_of")
    tensors = [
        {
            "name": weight_of.get(q.name, q.name),
            "source": q.source,
            "shape": list(q.shape),
            "bytes_before": q.bytes_before,
            "bytes_after": q.bytes_after,
            "weight_rms": q.weight_rms,
            "rms_error": q.rms_error,
            "max_abs_error": q.max_abs_error,
            "rel_rms_error": q.rel_rms_error,
            "rel_max_abs_error": q.rel_max_abs_error,
        }
        for q in result.quantized
    ]
    rel = [t["rel_rms_error"] for t in tensors]
    worst = max(tensors, key=lambda t: t["rel_rms_error"], default=None)
    return {
        **figures,
        "tensors": tensors,
        "quantized_bytes_before": sum(t["bytes_before"] for t in tensors),
        "quantized_bytes_after": sum(t["bytes_after"] for t in tensors),
        "output_bytes": result.outputs[0].tensor_bytes,
        "rel_rms_error_mean": sum(rel) / len(rel) if rel else None,
        "rel_rms_error_max": worst["rel_rms_error"] if worst else None,
        "rel_rms_error_worst": worst["name"] if worst else None,
        "rel_max_abs_error_max": max((t["rel_max_abs_error"] for t in tensors), default=None),
    }
