"""Slicing a Gemma 3n checkpoint, optionally quantizing it in the same pass: plan (validate
everything, write nothing), then execute."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import __version__, accounting, download, engine, gemma3n, ownership, staging
from .arguments import ArgumentError, bool_arg, callback_arg, int_arg, optional_str, path_arg, threads_arg
from .catalogue import spec_with_preset
from .engine import CheckpointInfo, TensorPlan
from .errors import SourceError, SpecError
from .formats.base import Format, Prepared, SlicedTensor
from .formats.safetensors import QuantOptions, Safetensors
from .gemma3n import Architecture, ParamCounts, Resolved
from .sources import Source, resolve_source
from .spec import SliceSpec
from .system import check_output_path


@dataclass(frozen=True)
class SlicePlan:
    """A validated slice: every output tensor (source, operation, role) and the new config,
    laid out by an output format (``output``: the engine's tensors and how to write them)."""

    source: Source
    config: dict
    arch: Architecture
    resolved: Resolved
    checkpoint: CheckpointInfo
    sliced: tuple[SlicedTensor, ...]
    new_config: dict
    preset: str | None = None  # the preset id the spec came from
    format: Format = Safetensors()
    output: Prepared | None = None

    @property
    def spec(self) -> SliceSpec:
        return self.resolved.spec

    @property
    def tensors(self) -> tuple[TensorPlan, ...]:
        """What the engine writes: the format's tensors."""
        return self.output.tensors

    @property
    def quant(self) -> QuantOptions | None:
        """The compressed-tensors quantization of a safetensors output (None otherwise)."""
        return self.format.options if isinstance(self.format, Safetensors) else None

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every output tensor's shape under its checkpoint name, before any format's changes."""
        src = self.checkpoint.tensors
        return {t.name: engine.output_shape(src[t.source].shape, t.op) for t in self.sliced}

    def output_bytes(self) -> int:
        """Tensor bytes of the output as written (quantized tensors at their packed size)."""
        src = self.checkpoint.tensors
        return sum(t.nbytes(src[t.source].shape, src[t.source].dtype) for t in self.tensors)

    def unquantized_bytes(self) -> int:
        """Tensor bytes the slice takes in the source dtype."""
        src = self.checkpoint.tensors
        return sum(
            math.prod(engine.output_shape(src[t.source].shape, t.op)) * engine.DTYPE_SIZES[src[t.source].dtype]
            for t in self.sliced
        )

    def config_text(self) -> str:
        """config.json as written into the output (and re-derived by `gslice verify`)."""
        return self.output.config_text()

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
    full_download: bool = False,
    format: Format | None = None,
) -> SlicePlan:
    """Checks the spec (or the preset, with the spec's tower options) and the output format
    against the source's config and tensors. Raises before any write. ``src`` may be a folder
    or a Hub repo id: only its small files and shard headers are fetched here (the data ranges
    the plan reads come when it is written), or, with ``full_download``, every file whole.
    ``quant`` is the older way to ask for ``format=Safetensors(quant=...)``."""
    if quant is not None and not isinstance(quant, QuantOptions):
        raise ArgumentError(f"quant must be a QuantOptions or None, not {type(quant).__name__}")
    fmt = output_format(format, quant)
    if isinstance(src, Source):
        source = src
    else:
        source = resolve_source(path_arg(src, "src"), optional_str(revision, "revision"),
                                full_download=bool_arg(full_download, "full_download"))
    config = gemma3n.read_config(source.files)
    if "quantization_config" in config:
        raise SourceError(
            f"{source.files / 'config.json'} has a quantization_config: the source is already quantized; "
            "gslice reads unquantized (BF16, F16, F32) checkpoints"
        )
    arch = gemma3n.architecture(config, str(source.files / "config.json"))
    spec, found = spec_with_preset(arch, spec, preset)
    resolved = gemma3n.resolve(arch, spec)
    ck = engine.inspect(source.path)
    gemma3n.check_source(config, arch, ck, resolved)
    sliced = tuple(gemma3n.plan_tensors(arch, ck, resolved))
    new_config = gemma3n.rewrite_config(config, arch, resolved)
    plan = SlicePlan(source, config, arch, resolved, ck, sliced, new_config, found.id if found else None, fmt)
    return replace(plan, output=fmt.prepare(plan))


def output_format(format: Format | None, quant: QuantOptions | None = None) -> Format:
    """The format a caller asked for: ``format``, or the older quantization options (which
    mean ``Safetensors``), never both."""
    if format is not None and quant is not None:
        raise SpecError("give the quantization inside format=Safetensors(quant=...), or quant=..., not both")
    if format is None:
        return Safetensors.of(quant)
    if not hasattr(format, "prepare"):
        raise SpecError(f"format: {format!r} is not an output format (gslice.Safetensors(...), gslice.GGUF(...) or gslice.MLX(...))")
    return format


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
    # None without compressed-tensors quantization; see formats.safetensors.SafetensorsOutput.report.
    quantization: dict | None = None
    format: dict | None = None  # the output format and what it did (GGUF: file type, tensor types)
    tool: str = field(default=f"gslice {__version__}")
    preset: str | None = None
    size: dict | None = None  # accounting.SizePlan.to_dict(): parameters, disk and RAM per scheme
    # A Hub source: download.DownloadPlan.to_dict(), plus "fetched" (download.FetchReport) unless a dry run
    download: dict | None = None
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
    full_download: bool = False,
    format: Format | None = None,
) -> SliceReport:
    """Slices ``src`` (a folder or a Hub repo id) into ``out``. Give a ``spec``, or its fields
    as keywords, or a ``preset`` id or name (with the tower keywords).

    ``format`` says how the slice is written: ``gslice.Safetensors(...)`` (the default: a
    Hugging Face checkpoint folder, optionally quantized), ``gslice.GGUF(type=...)`` (one
    file for llama.cpp) or ``gslice.MLX(bits=...)`` (a folder for mlx-lm). The older keywords ``quant="int4"`` or ``"int8"``, ``group_size``,
    ``quant_embeddings`` and ``quant_audio`` mean ``format=Safetensors(...)`` with the same
    options (see :class:`gslice.Safetensors`); give one or the other.

    From a Hub repo id, only the byte ranges the slice reads are downloaded, into the gslice
    range cache (``GSLICE_CACHE``); ``full_download=True`` downloads whole files into the
    Hugging Face cache instead."""
    out = path_arg(out, "out")
    flags = dict(drop_vision=drop_vision, drop_audio=drop_audio, text_only=text_only, overwrite=overwrite,
                 quant_embeddings=quant_embeddings, quant_audio=quant_audio, full_download=full_download)
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
    plan = prepare_slice(src, spec, preset=preset, revision=revision, quant=opts, full_download=full_download,
                         format=format)
    return write_slice(plan, out, overwrite=overwrite, max_shard_size=max_shard_size, threads=threads, progress=progress)


def output_plan(
    plan: SlicePlan,
    out: str | os.PathLike,
    *,
    source_record: dict,
    overwrite: bool = False,
    max_shard_size: int = engine.DEFAULT_MAX_SHARD_SIZE,
    preset: dict | None = None,
    download_record: dict | None = None,
) -> engine.OutputPlan:
    """The engine's view of one output, as its format lays it out, with the manifest
    (``source_record`` from :func:`gslice.manifest.source_record`, ``download_record`` from
    :meth:`gslice.download.DownloadPlan.manifest_record`)."""
    from .manifest import manifest

    output = plan.output.output_plan(
        plan, out, overwrite=overwrite, manifest=manifest(plan, source_record, preset, max_shard_size, download_record),
        title=preset["name"] if preset else None,
    )
    names = [*output.text_files, *output.copied_files]
    if output.container == "safetensors":  # a folder: its manifest and shards too
        names += [output.manifest.name, *engine.SHARD_NAME_EXAMPLES]
    check_output_path(output.dir, names)
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
    download_progress: Callable[[int, int], None] | None = None,
) -> SliceReport:
    """Writes the slice (with its manifest) atomically; ``dry_run`` reports the files (and
    what a Hub source would download) without writing or fetching. ``hash_source`` records the
    SHA-256 of every source shard (a full read, followed by ``hash_progress``). Everything that
    can fail (the output path's ownership, the report's figures) runs before the first byte is
    written or fetched: a Hub source's missing byte ranges come next (``download_progress``
    follows them), then stale temporary folders a killed run left beside the output are
    removed, live ones left alone, and the slice is written."""
    from .manifest import source_record

    started = time.perf_counter()
    target = output_target(plan, out, overwrite=overwrite)
    dplan = download.plan_download(plan.source, plan.checkpoint, plan.tensors)
    if hash_source and not dry_run:
        download.refuse_hash_of_ranges(plan.source)
    record = source_record(plan.source, plan.checkpoint.shards, hash_source=hash_source and not dry_run, progress=hash_progress)
    output = output_plan(plan, target, source_record=record, overwrite=overwrite, max_shard_size=max_shard_size,
                         download_record=dplan.manifest_record() if dplan else None)
    figures = _figures(plan)
    run = dict(max_shard_size=max_shard_size, threads=threads)
    fetched = None
    if dplan is not None and not dry_run:
        if dplan.to_fetch:  # the engine's own checks of the output before the first byte is fetched
            engine.execute(plan.source.path, [output], dry_run=True, **run)
        fetched = download.fetch(plan.source, dplan, download_progress)
        started = time.perf_counter()  # the report's time and rate are the write's
    leftovers = [f.describe(dry_run) for f in staging.clear(target.parent, dry_run=dry_run)]
    result = engine.execute(plan.source.path, [output], progress=progress, dry_run=dry_run, **run)
    report = slice_report(plan, figures, result, result.outputs[0], time.perf_counter() - started, leftovers)
    return replace(report, download=download_summary(dplan, fetched))


def download_summary(dplan: download.DownloadPlan | None, fetched: download.FetchReport | None) -> dict | None:
    if dplan is None:
        return None
    return {**dplan.to_dict(), "fetched": fetched.to_dict() if fetched else None}


def output_target(plan: SlicePlan, out: str | os.PathLike, *, overwrite: bool) -> Path:
    """The path to write ``out`` to, once :func:`gslice.ownership.check_output` allows it."""
    return ownership.check_output(out, overwrite=overwrite, source=plan.source.path, protected=source_files(plan))


def source_files(plan: SlicePlan) -> list[Path]:
    """Every file of the source that slicing reads (they may be links into a Hub cache)."""
    return [*plan.checkpoint.shards, plan.source.files / "config.json", *gemma3n.files_to_copy(plan.source.files, plan.spec).values()]


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
        quantization=plan.output.figures(plan),
        format=plan.output.describe(plan),
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
        quantization=plan.output.report(plan, quant, result),
        leftovers=leftovers,
    )


def size_plan_of(plan: SlicePlan, context: int | None = None) -> accounting.SizePlan:
    """Parameters, disk and RAM figures of a prepared slice (see :mod:`gslice.accounting`)."""
    return accounting.size_plan(
        plan.source.label, plan.preset, plan.arch, plan.resolved, plan.output_shapes(), plan.new_config,
        context or accounting.DEFAULT_CONTEXT,
    )
