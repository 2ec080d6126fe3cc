"""Many presets from one source in one engine run (``gslice bulk``).

Every preset is planned and validated before anything is written. The engine then writes each
distinct output tensor once (grouped by the exact set of outputs holding it) and hard-links
the shard files into every output folder that needs them; outputs are completed one after the
other, so an interrupted run keeps the finished ones, and ``resume`` skips those whose
manifest still checks out.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from . import engine, gemma3n
from .errors import GsliceError, OutputExistsError, SpecError
from .gemma3n import Architecture
from .manifest import MANIFEST_NAME, HashCache, check_files, read_manifest, same_source, source_record
from .slicing import SlicePlan, output_plan, prepare_slice
from .sources import Source, resolve_source
from .spec import SliceSpec


@dataclass(frozen=True)
class Preset:
    """What bulk needs of a preset. ``reference_ffn_width``: the full FFN width of the model
    the preset's widths were written for (16384 for Google's E4B configs); on a source of
    another full width (the tiny test checkpoints) the widths are scaled by the ratio."""

    name: str
    slug: str
    spec: SliceSpec
    reference_ffn_width: int | None = None


# -- the presets (until the preset catalogue lands: replace this function with it) --------

_WIDTH = re.compile(r"^\s*(\d[\d_]*)\s*(?:\*\s*(\d[\d_]*)\s*)?$")


def official_presets() -> list[Preset]:
    """Google's 16 published Gemma 3n configs (E4B source), read from the packaged CSV.
    Widths are written like ``2_048 * 8``: parsed as integer products, never evaluated."""
    text = resources.files("gslice").joinpath("data/gemma3n-slicing-configs.csv").read_text()
    presets = []
    for row in csv.DictReader(text.splitlines()):
        name = row["name"].strip()
        widths = tuple(_csv_width(t, name) for t in _csv_list(row["FFN Hidden Dims"]))
        skip = tuple(int(t) for t in _csv_list(row["Layers Skipped"]))
        slug = re.sub(r"[^a-z0-9.]+", "-", re.sub(r"^config for ", "", name.lower())).strip("-")
        presets.append(Preset(name, slug, SliceSpec(layers_to_skip=skip, ffn_dims=widths), reference_ffn_width=16384))
    return presets


def _csv_list(cell: str) -> list[str]:
    inner = (cell or "").strip().removeprefix("[").removesuffix("]")
    return [t for t in inner.split(",") if t.strip()]


def _csv_width(token: str, where: str) -> int:
    m = _WIDTH.match(token)
    if not m:
        raise SpecError(f"preset {where!r}: FFN width {token.strip()!r} is not an integer or a product of two")
    a, b = int(m.group(1)), int(m.group(2) or 1)
    return a * b


def catalogue() -> dict[str, list[Preset]]:
    official = official_presets()
    return {"official": official, "all": official}


def select_presets(text: str) -> list[Preset]:
    """'official', 'all', or a comma-separated list of preset names or slugs."""
    groups = catalogue()
    if text.strip() in groups:
        return list(groups[text.strip()])
    by_key = {}
    for p in groups["all"]:
        by_key[p.slug] = by_key[p.name.lower()] = p
    chosen = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        p = by_key.get(token.lower())
        if p is None:
            known = ", ".join(["official", "all"] + [q.slug for q in groups["all"]])
            raise SpecError(f"--presets: unknown preset {token!r} (known: {known})")
        if p not in chosen:
            chosen.append(p)
    if not chosen:
        raise SpecError("--presets: no preset given")
    return chosen


def fit_to_source(preset: Preset, arch: Architecture) -> SliceSpec:
    """The preset's spec for this source: widths scaled when the source's full FFN width is
    not the one the preset was written for."""
    spec, ref = preset.spec, preset.reference_ffn_width
    full = max(arch.ffn_widths)
    if ref is None or full == ref or spec.ffn_dims is None:
        return spec

    def scale(w: int) -> int:
        if (w * full) % ref:
            raise SpecError(f"FFN width {w} of a {ref}-wide model does not scale to this source's width {full}")
        return w * full // ref

    dims = scale(spec.ffn_dims) if isinstance(spec.ffn_dims, int) else tuple(scale(w) for w in spec.ffn_dims)
    return SliceSpec(spec.layers_to_skip, dims, spec.audio_layers_to_skip, spec.drop_vision, spec.drop_audio)


# -- planning -----------------------------------------------------------------------------


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
    leftovers: list[Path] = field(default_factory=list)


_LEFTOVER = re.compile(r"^(?:\.gslice-staging|\..+\.gslice-(?:partial|old))-(\d+)-\d+$")


def prepare_bulk(
    src: str | os.PathLike | Source,
    presets: Sequence[Preset],
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    hash_source: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BulkPlan:
    """Plans and validates every preset, decides what to do with existing outputs (``resume``
    re-hashes them: ``progress`` follows that), and raises one line per problem; writes nothing."""
    source = src if isinstance(src, Source) else resolve_source(src, revision)
    out = Path(out_dir).expanduser().absolute()
    problems: list[str] = []
    plans: list[tuple[Preset, SlicePlan]] = []
    seen: set[str] = set()
    arch = gemma3n.architecture(gemma3n.read_config(source.path), str(source.path / "config.json"))
    for p in presets:
        if p.slug in seen:
            problems.append(f"preset {p.slug} is listed twice")
            continue
        seen.add(p.slug)
        try:
            plans.append((p, prepare_slice(source, fit_to_source(p, arch))))
        except SpecError as e:
            problems.append(f"preset {p.slug}: {e}")
    if problems:
        raise SpecError("\n".join(problems))
    if not plans:
        raise SpecError("no presets to write")
    record = source_record(source, plans[0][1].checkpoint.shards, hash_source=hash_source)
    cache = HashCache()
    items = []
    for preset, plan in plans:
        d = out / preset.slug
        action, reason = _existing(d, preset, plan, record, resume, overwrite, cache, progress)
        if action == "refuse":
            problems.append(reason)
        items.append(BulkItem(preset, plan, d, action, reason))
    leftovers = _leftovers(out) if resume else []
    busy = [p for p in leftovers if _alive(p)]
    problems += [f"another gslice run (pid {_pid(p)}) is writing {p}; wait for it to finish" for p in busy]
    if problems:
        raise OutputExistsError("\n".join(problems))
    return BulkPlan(source, out, items, record, leftovers)


def _existing(d: Path, preset: Preset, plan: SlicePlan, record: dict, resume: bool, overwrite: bool, cache: HashCache, progress) -> tuple[str, str]:
    if not d.exists() and not d.is_symlink():
        return "write", ""
    if overwrite:
        return "replace", "--overwrite"
    if not resume:
        return "refuse", f"output {d} already exists (--resume keeps finished presets, --overwrite replaces them)"
    try:
        data = read_manifest(d)
    except GsliceError:
        return "refuse", f"output {d} exists but has no readable gslice manifest; move it away (--resume only replaces gslice outputs)"
    why = _manifest_differs(data, preset, plan, record) or check_files(d, data, cache, progress)
    if why:
        return "replace", why[0] + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")
    return "skip", "finished, manifest checks out"


def _manifest_differs(data: dict, preset: Preset, plan: SlicePlan, record: dict) -> list[str]:
    if data.get("spec") != plan.spec.to_json():
        return ["its spec differs from the preset's"]
    if (data.get("preset") or {}).get("slug") != preset.slug:
        return ["it was written for another preset"]
    return same_source(data.get("source") or {}, record)


def _leftovers(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if _LEFTOVER.match(p.name))


def _pid(p: Path) -> int:
    return int(_LEFTOVER.match(p.name).group(1))


def _alive(p: Path) -> bool:
    pid = _pid(p)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    removed_leftovers: list[str]

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
) -> BulkReport:
    started = time.perf_counter()
    removed = []
    if not dry_run:
        for p in bp.leftovers:  # what a killed run left: its staging and unfinished folders
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(str(p))
    todo = [it for it in bp.items if it.action != "skip"]
    outputs = [
        output_plan(
            it.plan, it.dir, source_record=bp.source_record, overwrite=it.action == "replace",
            max_shard_size=max_shard_size, preset={"name": it.preset.name, "slug": it.preset.slug},
        )
        for it in todo
    ]
    result = None
    if outputs:
        result = engine.execute(
            bp.source.path, outputs, max_shard_size=max_shard_size, dedupe=dedupe, threads=threads,
            progress=progress, dry_run=dry_run,
        )
    reports = dict(zip((id(it) for it in todo), result.outputs if result else ()))
    rows, first_user = [], set()
    for it in bp.items:
        rep = reports.get(id(it))
        rows.append(_row(it, rep, first_user, dry_run))
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
        removed_leftovers=removed,
    )


def _row(it: BulkItem, rep: engine.OutputReport | None, first_user: set[int], dry_run: bool) -> BulkRow:
    plan = it.plan
    common = dict(
        preset=it.preset.name, slug=it.preset.slug, dir=str(it.dir), layers=len(plan.resolved.kept),
        ffn_dims=list(plan.resolved.widths), params=asdict(plan.params()), tensors=len(plan.tensors), reason=it.reason,
    )
    if rep is None:  # skipped: finished by an earlier run
        files = read_manifest(it.dir)["files"]
        shard_bytes = sum(m["size"] for n, m in files.items() if n.endswith(".safetensors"))
        total = sum(m["size"] for m in files.values()) + (it.dir / MANIFEST_NAME).stat().st_size
        return BulkRow(status="skipped", bytes=total, shard_bytes=shard_bytes, written=0, shared_bytes=0, seconds=0.0, **common)
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
