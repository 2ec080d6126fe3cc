"""Many presets from one source in one engine run (``gslice bulk``).

Every preset is planned and validated before anything is written. The engine then writes each
distinct output tensor once (grouped by the exact set of outputs holding it) and hard-links
the shard files into every output folder that needs them; outputs are completed one after the
other, so an interrupted run keeps the finished ones, and ``resume`` skips those whose
manifest still checks out.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import download, engine, gemma3n, ownership, staging
from .errors import GsliceError, OutputExistsError, SpecError
from .catalogue import Preset, find_preset, official_presets
from .catalogue import presets as all_presets
from .formats.base import Format
from .formats.gguf import source_dtype
from .formats.safetensors import QuantOptions
from .manifest import MANIFEST_NAME, HashCache, check_output, is_file_output, read_manifest, read_output_manifest, same_source, source_record
from .slicing import SlicePlan, output_plan, prepare_slice, single_files, source_files
from .sources import Source, resolve_source
from .spec import SliceSpec


def select_presets(text: str) -> list[Preset]:
    """'official' (Google's 16 configs), 'all' (those and gslice's own), or a comma-separated
    list of preset ids or names (exact match, with a did-you-mean on a miss)."""
    groups = {"official": official_presets, "all": all_presets}
    if text.strip() in groups:
        return list(groups[text.strip()]())
    chosen: list[Preset] = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        try:
            preset = find_preset(token)
        except SpecError as e:
            raise SpecError(f"--presets: {e}") from None
        if preset not in chosen:
            chosen.append(preset)
    if not chosen:
        raise SpecError("--presets: no preset given")
    return chosen


# -- planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Unsliced:
    """The source itself, unsliced, written as one more output of a bulk run: the reference
    that ``bulk --eval`` measures the outputs against in their own runtime (its name and slug
    stand where a preset's do)."""

    name: str
    slug: str

    @staticmethod
    def of(plan: SlicePlan) -> "Unsliced":
        """Named by what its numbers are: ``source-q8_0`` (GGUF), ``source-8bit`` (MLX), and the
        source's own dtype for a format that keeps it (``source-bf16``)."""
        fmt = plan.format
        if fmt.name == "gguf":
            kind = plan.output.file_type  # the type a GGUF(None) resolves to: the source's dtype
        elif getattr(fmt, "bits", None):
            kind = f"{fmt.bits}bit"
        else:
            kind = source_dtype(plan)
        return Unsliced("the source, unsliced (the reference of --eval)", f"source-{kind.lower()}")


@dataclass
class BulkItem:
    preset: Preset
    plan: SlicePlan
    dir: Path
    action: str  # "write", "replace" (exists, re-written) or "skip" (finished and verified)
    reason: str = ""


@dataclass
class BulkPlan:
    source: Source
    out_dir: Path
    items: list[BulkItem]
    source_record: dict


def prepare_bulk(
    src: str | os.PathLike | Source,
    presets: Sequence[Preset],
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    hash_source: bool = False,
    quant: QuantOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    hash_progress: Callable[[int, int], None] | None = None,
    full_download: bool = False,
    weights: bool = True,
    format: Format | None = None,
    reference: Format | None = None,
) -> BulkPlan:
    """Plans and validates every preset, decides what to do with existing outputs (``resume``
    re-hashes them, in one pass that ``progress`` follows; ``hash_progress`` follows the
    source hashing of ``hash_source``), and raises one line per problem; writes nothing.
    A Hub source is opened as :func:`gslice.sources.resolve_source` does (``weights=False``:
    never whole files, for a dry run). ``reference``: also write the source itself, unsliced,
    in that format (the first item: ``bulk --eval`` measures the outputs against it)."""
    source = src if isinstance(src, Source) else resolve_source(src, revision, full_download=full_download, weights=weights)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output folder {out} exists and is not a folder")
    problems: list[str] = []
    plans: list[tuple[Preset, SlicePlan]] = []
    seen: set[str] = set()
    arch = gemma3n.architecture(gemma3n.read_config(source.files), str(source.files / "config.json"))
    for p in presets:
        if p.slug in seen:
            problems.append(f"preset {p.slug} is listed twice")
            continue
        seen.add(p.slug)
        try:
            spec = p.spec_for(arch)  # its messages name the preset already
        except SpecError as e:
            problems.append(str(e))
            continue
        try:
            plans.append((p, prepare_slice(source, spec, quant=quant, format=format)))
        except SpecError as e:
            problems.append(f"preset {p.slug}: {e}")
    if problems:
        raise SpecError("\n".join(problems))
    if not plans:
        raise SpecError("no presets to write")
    if reference is not None:
        unsliced = prepare_slice(source, SliceSpec(), format=reference)
        plans.insert(0, (Unsliced.of(unsliced), unsliced))
    if hash_source:
        download.refuse_hash_of_ranges(source)
    record = source_record(source, plans[0][1].checkpoint.shards, hash_source=hash_source, progress=hash_progress)
    protected = source_files(plans[0][1])
    items = []
    for preset, plan in plans:
        d = out / (f"{preset.slug}.gguf" if plan.format.name == "gguf" else preset.slug)
        try:
            action, reason = _existing(d, preset, plan, record, resume, overwrite, source.path, protected)
        except OutputExistsError as e:
            action, reason = "refuse", str(e)
            problems.append(reason)
        items.append(BulkItem(preset, plan, d, action, reason))
    _verify_finished(items, progress)
    busy = [f for f in staging.find(out) if f.live] if resume else []
    problems += [f"another gslice run (pid {f.pid}) is writing {f.path}; wait for it to finish" for f in busy]
    if problems:
        raise OutputExistsError("\n".join(problems))
    return BulkPlan(source, out, items, record)


def _existing(d: Path, preset: Preset, plan: SlicePlan, record: dict, resume: bool, overwrite: bool,
              source: Path, protected: list) -> tuple[str, str]:
    """("write" | "replace" | "verify", reason); raises for a path that must not be replaced."""
    exists = d.exists() or d.is_symlink()
    if exists and not (overwrite or resume):
        raise OutputExistsError(f"output {d} already exists (--resume keeps finished presets, --overwrite replaces them)")
    # gslice's own (with a GGUF file, what gslice keeps next to it too), or refused
    ownership.check_output(d, overwrite=overwrite or resume, source=source, protected=protected)
    if not exists:
        return "write", ""
    if overwrite:
        return "replace", "--overwrite"
    try:
        data = read_output_manifest(d)
    except GsliceError:
        return "replace", "unfinished (no manifest)"
    why = _manifest_differs(data, preset, plan, record)
    return ("replace", why[0]) if why else ("verify", "")


def _verify_finished(items: list[BulkItem], progress) -> None:
    """Re-hashes the files of every finished output at once (one progress total), then keeps
    ("skip") those whose files check out and redoes the others. A GGUF file checks its own
    digest."""
    todo = [it for it in items if it.action == "verify"]
    if not todo:
        return
    cache = HashCache()
    folders = [it for it in todo if not is_file_output(it.dir)]
    data = {id(it): read_output_manifest(it.dir) for it in todo}
    paths = [it.dir / n for it in folders for n, meta in data[id(it)]["files"].items()
             if (it.dir / n).is_file() and not (it.dir / n).is_symlink() and (it.dir / n).stat().st_size == meta["size"]]
    cache.hash_all(paths, progress)
    for it in todo:
        why = check_output(it.dir, data[id(it)], cache)
        if why:
            it.action, it.reason = "replace", why[0] + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")
        else:
            it.action, it.reason = "skip", "finished, manifest checks out"


def _manifest_differs(data: dict, preset: Preset, plan: SlicePlan, record: dict) -> list[str]:
    if data.get("spec") != plan.spec.to_json():
        return ["its spec differs from the preset's"]
    if data.get("quant") != (plan.quant.to_json() if plan.quant else None):
        return ["it was written with other quantization options"]
    if data.get("output_format", {"name": "safetensors"}) != plan.format.to_json():
        return ["it was written in another output format"]
    if (data.get("preset") or {}).get("slug") != preset.slug:
        return ["it was written for another preset"]
    return same_source(data.get("source") or {}, record)


# -- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkRow:
    preset: str
    slug: str
    dir: str
    status: str  # "written", "replaced", "skipped" (finished earlier, verified), or "planned" (dry run)
    layers: int
    ffn_dims: list[int]
    params: dict
    tensors: int
    bytes: int  # every file of the folder
    shard_bytes: int
    written: int  # shard bytes first written for this output (a shared piece counts for the first output that needs it)
    shared_bytes: int  # shard bytes in files hard-linked with other outputs of this run
    seconds: float
    reason: str = ""
    eval: dict | None = None  # `bulk --eval`: what was recorded in its manifest (evaluation/record.py)


@dataclass(frozen=True)
class BulkReport:
    source: str
    output_dir: str
    dedupe: bool
    dry_run: bool
    rows: list[BulkRow]
    bytes_written: int
    bytes_if_independent: int  # what writing each written output on its own would have cost
    distinct_tensors: int
    seconds: float
    leftovers: list[str]  # gslice's temporary folders found in the output folder: removed, or left to a live run
    download: dict | None = None  # a Hub source: see slicing.download_summary

    def to_dict(self) -> dict:
        return asdict(self)


def write_bulk(
    bp: BulkPlan,
    *,
    dedupe: bool = True,
    threads: int | None = None,
    max_shard_size: int = engine.DEFAULT_MAX_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
    download_progress: Callable[[int, int], None] | None = None,
) -> BulkReport:
    """Writes the outputs still to do. A Hub source's missing byte ranges (for all of them at
    once) are fetched first, after the outputs' checks; ``download_progress`` follows that."""
    from .slicing import download_summary

    started = time.perf_counter()
    figures = {id(it): _figures(it) for it in bp.items}  # all that can fail, before any write
    todo = [it for it in bp.items if it.action != "skip"]
    dplan = None
    if todo:
        dplan = download.plan_download(bp.source, todo[0].plan.checkpoint, [t for it in todo for t in it.plan.tensors])
    outputs = [
        output_plan(
            it.plan, it.dir, source_record=bp.source_record, overwrite=it.action == "replace",
            max_shard_size=max_shard_size, preset={"name": it.preset.name, "slug": it.preset.slug},
            download_record=_download_record(bp.source, it.plan),
        )
        for it in todo
    ]
    fetched = None
    if dplan is not None and not dry_run:
        if dplan.to_fetch:  # the engine's own checks of the outputs before the first byte is fetched
            engine.execute(bp.source.path, outputs, max_shard_size=max_shard_size, dedupe=dedupe, dry_run=True)
        fetched = download.fetch(bp.source, dplan, download_progress)
        started = time.perf_counter()  # the report's time is the write's
    leftovers = [f.describe(dry_run) for f in staging.clear(bp.out_dir, dry_run=dry_run)]
    result = None
    if outputs:
        with ownership.companions_follow(single_files(outputs)):
            result = engine.execute(
                bp.source.path, outputs, max_shard_size=max_shard_size, dedupe=dedupe, threads=threads,
                progress=progress, dry_run=dry_run,
            )
    reports = dict(zip((id(it) for it in todo), result.outputs if result else ()))
    rows, first_user = [], set()
    for it in bp.items:
        rows.append(_row(it, figures[id(it)], reports.get(id(it)), first_user, dry_run))
    return BulkReport(
        source=bp.source.label,
        output_dir=str(bp.out_dir),
        dedupe=dedupe,
        dry_run=dry_run,
        rows=rows,
        bytes_written=result.bytes_written if result else 0,
        bytes_if_independent=sum(r.file_bytes for r in result.outputs) if result else 0,
        distinct_tensors=result.distinct_tensors if result else 0,
        seconds=time.perf_counter() - started,
        leftovers=leftovers,
        download=download_summary(dplan, fetched),
    )


def _download_record(source: Source, plan: SlicePlan) -> dict | None:
    """What one output rests on (its own ranges, not the union the run fetched)."""
    dplan = download.plan_download(source, plan.checkpoint, plan.tensors)
    return dplan.manifest_record() if dplan else None


def _figures(it: BulkItem) -> dict:
    """A row's fields known before writing; for an output kept from an earlier run, its sizes
    from its manifest."""
    plan = it.plan
    common = dict(
        preset=it.preset.name, slug=it.preset.slug, dir=str(it.dir), layers=len(plan.resolved.kept),
        ffn_dims=list(plan.resolved.widths), params=asdict(plan.params()), tensors=len(plan.tensors), reason=it.reason,
    )
    if it.action == "skip" and is_file_output(it.dir):  # a finished GGUF file
        common["shard_bytes"] = common["bytes"] = it.dir.stat().st_size
    elif it.action == "skip":
        files = read_manifest(it.dir)["files"]
        common["shard_bytes"] = sum(m["size"] for n, m in files.items() if n.endswith(".safetensors"))
        common["bytes"] = sum(m["size"] for m in files.values()) + (it.dir / MANIFEST_NAME).stat().st_size
    return common


def _row(it: BulkItem, common: dict, rep: engine.OutputReport | None, first_user: set[int], dry_run: bool) -> BulkRow:
    if rep is None:  # skipped: finished by an earlier run
        return BulkRow(status="skipped", written=0, shared_bytes=0, seconds=0.0, **common)
    written = 0
    for s in rep.shards:
        if s.piece not in first_user:
            first_user.add(s.piece)
            written += s.bytes
    status = "planned" if dry_run else {"write": "written", "replace": "replaced"}[it.action]
    return BulkRow(
        status=status,
        bytes=sum(f.bytes for f in rep.files),
        shard_bytes=rep.file_bytes,
        written=written,
        shared_bytes=sum(s.bytes for s in rep.shards if s.shared_by > 1),
        seconds=rep.seconds,
        **common,
    )
