"""``gslice-manifest.json``: what an output folder is and how to check it.

The engine writes the manifest last into the output's temporary folder, so a folder never
appears without it. It holds:

* ``source``: the label, path, Hub repo id / revision / commit, and a fingerprint of every
  source shard: size, mtime and SHA-256 of the safetensors header always; the SHA-256 of the
  whole shard when it costs nothing (a Hub cache blob is named by it) or when asked for
  (``hash_source``: reading 15.7 GB of E4B takes longer than the slice itself on a laptop);
* ``spec`` (the exact spec applied, widths included), ``preset`` (bulk), the resulting layers
  and parameter counts, and the tool version;
* ``files``: size and SHA-256 of every other file of the folder (added by the engine).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import stat
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from . import __version__, engine
from .errors import SourceError
from .jsonfile import read_json

if TYPE_CHECKING:
    from .slicing import SlicePlan
    from .sources import Source

MANIFEST_NAME = "gslice-manifest.json"
FORMAT = "gslice-manifest/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- writing ------------------------------------------------------------------------------


def source_record(
    source: "Source", shards: Iterable[Path], hash_source: bool = False, progress: Callable[[int, int], None] | None = None
) -> dict:
    """The source's identity and a fingerprint of each shard (see the module docstring);
    ``progress`` follows the hashing of whole shards (``hash_source``)."""
    shards = [Path(p) for p in shards]
    entries = [_shard_fingerprint(p) for p in shards]
    if hash_source:
        todo = [(e, p) for e, p in zip(entries, shards) if "sha256" not in e]
        for (e, _), digest in zip(todo, engine.sha256_files([p for _, p in todo], progress)):
            e["sha256"], e["sha256_from"] = digest, "computed"
    config = source.path / "config.json"
    return {
        "label": source.label,
        "path": str(source.path),
        "repo_id": source.repo_id,
        "revision": source.revision,
        "commit": source.commit,
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "shards": entries,
    }


def _shard_fingerprint(path: Path) -> dict:
    st = path.stat()
    entry = {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "header_sha256": _header_sha256(path)}
    blob = path.resolve()
    # The Hub cache stores an LFS file as blobs/<sha256 of its content>.
    if path.is_symlink() and blob.parent.name == "blobs" and _SHA256.match(blob.name):
        entry["sha256"], entry["sha256_from"] = blob.name, "hub"
    return entry


def _header_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        # The engine validated the header already; the cap only guards a file changed since.
        return hashlib.sha256(prefix + f.read(min(n, 100 << 20))).hexdigest()


def manifest_fields(plan: "SlicePlan", source: dict, preset: dict | None = None, max_shard_size: int | None = None) -> dict:
    return {
        "format": FORMAT,
        "tool": f"gslice {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "spec": plan.spec.to_json(),
        "quant": plan.quant.to_json() if plan.quant else None,
        "preset": preset,
        "result": {
            "layers": len(plan.resolved.kept),
            "ffn_dims": list(plan.resolved.widths),
            "params": asdict(plan.params()),
            "tensors": len(plan.tensors),
            "tensor_bytes": plan.output_bytes(),
        },
        "max_shard_size": max_shard_size,
    }


def manifest(plan: "SlicePlan", source: dict, preset: dict | None = None, max_shard_size: int | None = None) -> engine.Manifest:
    return engine.Manifest(MANIFEST_NAME, manifest_fields(plan, source, preset, max_shard_size))


# -- reading and checking -----------------------------------------------------------------


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, checked: a JSON object of this format whose ``files`` are
    plain names in the folder with their size and SHA-256, and whose ``source`` and ``preset``
    have the shape gslice writes (``spec`` and ``quant`` are checked where they are used)."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    if path.is_symlink() or not path.is_file():
        raise SourceError(f"{folder} has no {MANIFEST_NAME}: it was not written by gslice, so there is nothing to check it against")
    data = read_json(path, "manifest")
    problem = manifest_problem(data)
    if problem:
        raise SourceError(f"{path} is not a {FORMAT} manifest: {problem}")
    return data


def manifest_problem(data) -> str | None:
    """What makes ``data`` unusable as a manifest, or None."""
    if not isinstance(data, dict):
        return f"it holds {type(data).__name__}, not an object"
    if data.get("format") != FORMAT:
        return f"its format is {data.get('format')!r}"
    files = data.get("files")
    if not isinstance(files, dict):
        return "its files entry is not an object"
    for name, meta in files.items():
        if not is_plain_name(name):
            return f"file name {name!r} is not a plain file name inside the folder"
        if name == MANIFEST_NAME:
            return "it lists itself among its files"
        if not isinstance(meta, dict) or not _count(meta.get("size")) or not _SHA256.match(str(meta.get("sha256"))):
            return f"the entry of {name} is not {{\"size\": bytes, \"sha256\": hex digest}}"
    source = data.get("source", {})
    if not isinstance(source, dict) or not isinstance(source.get("shards", []), list):
        return "its source entry is not an object with a list of shards"
    for shard in source.get("shards", []):
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str) or not _count(shard.get("size")):
            return f"source shard entry {shard!r} lacks a name and a size"
    preset = data.get("preset")
    if preset is not None and not (isinstance(preset, dict) and isinstance(preset.get("slug"), str)):
        return f"its preset entry {preset!r} is not an object with a slug"
    return None


def is_plain_name(name) -> bool:
    """A file directly inside a folder: no separator, not '.' or '..', no NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def write_folder_manifest(folder: Path, fields: dict) -> None:
    """Writes a manifest listing every file of ``folder`` (flat) with its size and SHA-256, so
    that gslice recognises the folder as its own (the engine does this for outputs)."""
    files = sorted(p for p in folder.iterdir() if p.name != MANIFEST_NAME)
    digests = engine.sha256_files(files)
    listed = {p.name: {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}
    text = json.dumps({"format": FORMAT, "tool": f"gslice {__version__}", **fields, "files": listed}, indent=2) + "\n"
    (folder / MANIFEST_NAME).write_text(text)


class HashCache:
    """SHA-256 by (device, inode, size, mtime): bulk outputs hard-link shared shards, so
    checking all of them reads each physical file once."""

    def __init__(self) -> None:
        self.known: dict[tuple, str] = {}

    @staticmethod
    def key(st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def hash_all(self, paths: list[Path], progress: Callable[[int, int], None] | None = None) -> dict[Path, str]:
        keys = {p: self.key(p.stat()) for p in paths}
        todo: dict[tuple, Path] = {}
        for p, k in keys.items():
            if k not in self.known:
                todo.setdefault(k, p)
        if todo:
            for k, digest in zip(todo, engine.sha256_files(list(todo.values()), progress)):
                self.known[k] = digest
        return {p: self.known[k] for p, k in keys.items()}


def check_files(
    folder: Path, data: Mapping, cache: HashCache | None = None, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Problems with the files of ``folder`` against its manifest, one line each: missing,
    resized or changed files, and files the manifest does not list."""
    problems: list[str] = []
    listed: dict = data["files"]  # plain names only (read_manifest checked them)
    to_hash: list[Path] = []
    for name, meta in sorted(listed.items()):
        p = folder / name
        st = _lstat(p)
        if st is None:
            problems.append(f"missing file {name} (listed in the manifest)")
        elif not stat.S_ISREG(st.st_mode):
            problems.append(f"{name} is not a regular file (a symbolic link or a folder); it was not read")
        elif st.st_size != meta["size"]:
            problems.append(f"{name}: {st.st_size} bytes, the manifest says {meta['size']}")
        else:
            to_hash.append(p)
    digests = (cache or HashCache()).hash_all(to_hash, progress)
    for p in to_hash:
        if digests[p] != listed[p.name]["sha256"]:
            problems.append(f"{p.name}: sha256 differs from the manifest (the file changed after it was written)")
    problems += [f"extra file {rel} (not listed in the manifest)" for rel in unlisted_files(folder, data)]
    return problems


def unlisted_files(folder: Path, data: Mapping) -> list[str]:
    """Files and links under ``folder`` that its manifest does not list (relative paths)."""
    listed = data["files"]
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if (p.is_symlink() or not p.is_dir()) and rel != MANIFEST_NAME and rel not in listed:
            out.append(rel)
    return out


def _lstat(p: Path) -> os.stat_result | None:
    try:
        return p.lstat()
    except FileNotFoundError:
        return None


def same_source(recorded: Mapping, current: Mapping, compare_mtime: bool = True) -> list[str]:
    """Differences between two source fingerprints (their paths may differ). Whole-shard
    hashes decide when both sides have one; otherwise size, header hash and (for resuming)
    mtime must match, since a fine-tune saved over the same layout keeps sizes and headers.
    ``verify --against`` compares the tensor bytes themselves, so it ignores mtimes."""
    problems = []
    rec = {s["name"]: s for s in recorded.get("shards", [])}
    cur = {s["name"]: s for s in current.get("shards", [])}
    if rec.keys() != cur.keys():
        return [f"source shards are {sorted(cur)}, the manifest recorded {sorted(rec)}"]
    for name in sorted(rec):
        a, b = rec[name], cur[name]
        if "sha256" in a and "sha256" in b:
            fields = ("size", "sha256")
        else:
            fields = ("size", "header_sha256", "mtime_ns") if compare_mtime else ("size", "header_sha256")
        changed = [f for f in fields if a.get(f) != b.get(f)]
        if changed:
            problems.append(f"source shard {name} differs from the one recorded in the manifest ({', '.join(changed)})")
    if recorded.get("config_sha256") != current.get("config_sha256"):
        problems.append("source config.json differs from the one recorded in the manifest")
    return problems
