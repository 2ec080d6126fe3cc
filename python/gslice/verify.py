"""``gslice verify``: is an output folder still what its manifest says, and (given the source)
is every tensor exactly what the manifest's spec derives from it?"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import download, engine, gemma3n
from .errors import GsliceError, SourceError, SpecError
from . import formats
from .formats import gguf
from .manifest import MANIFEST_NAME, HashCache, check_files, is_file_output, read_manifest, same_source, source_record
from .slicing import prepare_slice
from .sources import Source, resolve_source
from .spec import spec_from_mapping


@dataclass(frozen=True)
class VerifyResult:
    output: str
    problems: list[str]
    files_checked: int
    tensors_compared: int | None  # None without a source to compare against
    bytes_compared: int = 0
    bytes_downloaded: int = 0  # source ranges a Hub source fetched for this check

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def output_folders(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it carries a manifest (or is a GGUF file); else its sub-folders that do
    and its GGUF files (a bulk run's output folder); else ``path`` (whose check then reports the
    missing manifest)."""
    p = Path(path)
    if (p / MANIFEST_NAME).is_file() or not p.is_dir():
        return [p]
    children = sorted(c for c in p.iterdir() if (c.is_dir() and (c / MANIFEST_NAME).is_file()) or (c.is_file() and c.suffix == ".gguf"))
    return children or [p]


def verify_output(
    out: str | os.PathLike,
    against: str | os.PathLike | Source | None = None,
    *,
    revision: str | None = None,
    cache: HashCache | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    full_download: bool = False,
    download_progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Re-hashes every file listed in the manifest (and flags unlisted ones); with a source,
    re-derives every tensor and the config from the manifest's spec and compares bytes (a Hub
    source fetches the byte ranges that takes, as a slice does, unless ``full_download``).
    Raises (exit 2) only when there is nothing to verify against."""
    if is_file_output(Path(out)):
        return _verify_file(Path(out), against, revision, threads, progress)
    folder = Path(out)
    data = read_manifest(folder)
    problems = check_files(folder, data, cache, progress)
    if against is None:
        return VerifyResult(str(folder), problems, len(data["files"]), None)
    source = against if isinstance(against, Source) else resolve_source(against, revision, full_download=full_download)
    try:
        where = f"{folder / MANIFEST_NAME}"
        spec = spec_from_mapping(data.get("spec"), where)
        plan = prepare_slice(source, spec, format=formats.from_manifest(data, where))
    except SpecError as e:
        raise SourceError(f"the spec in {folder / MANIFEST_NAME} does not apply to {source.label}: {e}") from None
    problems += same_source(data.get("source") or {}, source_record(source, plan.checkpoint.shards), compare_mtime=False)
    compared = 0
    fetched = download.fetch(source, download.plan_download(source, plan.checkpoint, plan.tensors), download_progress)
    try:
        report = engine.compare(source.path, folder, plan.tensors, threads=threads, progress=progress)
        compared = report.bytes_compared
        problems += [f"tensor {m.tensor} {m.problem}" for m in report.mismatches]
    except GsliceError as e:
        problems.append(f"cannot compare tensors: {e}")
    problems += _side_files(folder, plan)
    got = fetched.bytes + fetched.headers_bytes if fetched else 0
    return VerifyResult(str(folder), problems, len(data["files"]), len(plan.tensors), compared, got)


def _verify_file(path: Path, against, revision, threads, progress) -> VerifyResult:
    """A GGUF file: its digest; with a source, its header and every tensor's data re-derived."""
    data, problems = gguf.check_file(path)
    if against is None:
        return VerifyResult(str(path), problems, 1, None)
    source = against if isinstance(against, Source) else resolve_source(against, revision)
    where = f"{path}: {gguf.MANIFEST_KEY}"
    try:
        spec = spec_from_mapping(data.get("spec"), where)
        plan = prepare_slice(source, spec, format=gguf.GGUF.from_json(data.get("output_format") or {}, where))
    except SpecError as e:
        raise SourceError(f"the spec in {where} does not apply to {source.label}: {e}") from None
    problems += same_source(data.get("source") or {}, source_record(source, plan.checkpoint.shards), compare_mtime=False)
    header, offsets = gguf.compare_file(path, plan)
    problems += header
    report = engine.compare_gguf(source.path, path, plan.tensors, offsets, threads=threads, progress=progress)
    problems += [f"tensor {m.tensor} {m.problem}" for m in report.mismatches]
    return VerifyResult(str(path), problems, 1, len(plan.tensors), report.bytes_compared)


def _side_files(folder: Path, plan) -> list[str]:
    problems = []
    config = folder / "config.json"
    if config.is_file() and config.read_text() != plan.config_text():
        problems.append("config.json differs from the config the spec derives from the source")
    for name, src in gemma3n.files_to_copy(plan.source.files, plan.spec).items():
        dest = folder / name
        if dest.is_file() and dest.read_bytes() != src.read_bytes():
            problems.append(f"{name} differs from the source's {name}")
    return problems
