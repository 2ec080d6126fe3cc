"""``gslice verify``: is an output folder still what its manifest says, and (given the source)
is every tensor exactly what the manifest's spec derives from it?"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import engine, gemma3n
from .errors import GsliceError, SourceError, SpecError
from .manifest import MANIFEST_NAME, HashCache, check_files, read_manifest, same_source, source_record
from .slicing import prepare_slice
from .formats.safetensors import QuantOptions
from .sources import Source, resolve_source
from .spec import spec_from_mapping


@dataclass(frozen=True)
class VerifyResult:
    output: str
    problems: list[str]
    files_checked: int
    tensors_compared: int | None  # None without a source to compare against
    bytes_compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def output_folders(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it carries a manifest; else its sub-folders that do (a bulk run's
    output folder); else ``path`` (whose check then reports the missing manifest)."""
    p = Path(path)
    if (p / MANIFEST_NAME).is_file() or not p.is_dir():
        return [p]
    children = sorted(c for c in p.iterdir() if c.is_dir() and (c / MANIFEST_NAME).is_file())
    return children or [p]


def verify_output(
    out: str | os.PathLike,
    against: str | os.PathLike | Source | None = None,
    *,
    revision: str | None = None,
    cache: HashCache | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Re-hashes every file listed in the manifest (and flags unlisted ones); with a source,
    re-derives every tensor and the config from the manifest's spec and compares bytes.
    Raises (exit 2) only when there is nothing to verify against."""
    folder = Path(out)
    data = read_manifest(folder)
    problems = check_files(folder, data, cache, progress)
    if against is None:
        return VerifyResult(str(folder), problems, len(data["files"]), None)
    source = against if isinstance(against, Source) else resolve_source(against, revision)
    try:
        where = f"{folder / MANIFEST_NAME}"
        spec = spec_from_mapping(data.get("spec"), where)
        plan = prepare_slice(source, spec, quant=QuantOptions.from_json(data.get("quant"), where))
    except SpecError as e:
        raise SourceError(f"the spec in {folder / MANIFEST_NAME} does not apply to {source.label}: {e}") from None
    problems += same_source(data.get("source") or {}, source_record(source, plan.checkpoint.shards), compare_mtime=False)
    compared = 0
    try:
        report = engine.compare(source.path, folder, plan.tensors, threads=threads, progress=progress)
        compared = report.bytes_compared
        problems += [f"tensor {m.tensor} {m.problem}" for m in report.mismatches]
    except GsliceError as e:
        problems.append(f"cannot compare tensors: {e}")
    problems += _side_files(folder, plan)
    return VerifyResult(str(folder), problems, len(data["files"]), len(plan.tensors), compared)


def _side_files(folder: Path, plan) -> list[str]:
    problems = []
    config = folder / "config.json"
    if config.is_file() and config.read_text() != plan.config_text():
        problems.append("config.json differs from the config the spec derives from the source")
    for name, src in gemma3n.files_to_copy(plan.source.path, plan.spec).items():
        dest = folder / name
        if dest.is_file() and dest.read_bytes() != src.read_bytes():
            problems.append(f"{name} differs from the source's {name}")
    return problems
