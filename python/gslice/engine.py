"""Typed access to the Rust engine (``gslice._core``).

The engine knows safetensors and GGUF files and plans; it knows nothing about Gemma. A plan
lists, for each output (a folder of safetensors shards, or one GGUF file), the tensors to write
(each = a source tensor + one operation, optionally quantized; for GGUF also stacked, padded
and stored as a GGML type) and, for a folder, the extra files (config, tokenizer, model card)
to place beside them, for a GGUF file its typed metadata.
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

from . import _core, interrupts, staging
from .errors import (
    DiskFullError,
    GsliceError,
    InternalError,
    Interrupted,
    OutputExistsError,
    ProtectedPathError,
    SourceError,
    WriteError,
)

DEFAULT_MAX_SHARD_SIZE = 5_000_000_000
# The names the engine gives shard files and the index: the longest forms, for path limits.
SHARD_NAME_EXAMPLES = ("model-99999-of-99999.safetensors", "model.safetensors.index.json")

# The ``__metadata__`` of safetensors shards, as torch's writers (and transformers) give it.
SHARD_METADATA = {"format": "pt"}

# Set to 1, the engine moves bytes with its portable code (what macOS and Windows run) even
# where a faster platform path exists (Linux): tests and benchmarks compare the two.
PORTABLE_IO_ENV = "GSLICE_PORTABLE_IO"

# GGML types the engine writes: (elements per block, bytes per block), as ggml's type traits.
GGML_BLOCKS = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2),
    "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
    "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210),
}


def ggml_row_bytes(ggml: str, width: int) -> int | None:
    """Bytes of one row of ``width`` elements, or None when the width is not whole blocks."""
    n, size = GGML_BLOCKS[ggml]
    return None if width % n else width // n * size


# Bytes per element of the safetensors dtypes the engine accepts.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}

_ERRORS: dict[str, type[GsliceError]] = {
    "format": SourceError,
    "plan": SourceError,
    "exists": OutputExistsError,
    "protected": ProtectedPathError,
    "disk_full": DiskFullError,
    "io": WriteError,
    "internal": InternalError,
}


def _portable_io() -> bool:
    value = os.environ.get(PORTABLE_IO_ENV, "")
    if value not in ("", "0", "1"):
        raise GsliceError(f"{PORTABLE_IO_ENV}={value!r}: must be 1 (the portable I/O path), or 0 or unset (the platform's fastest)")
    return value == "1"


def _error(err: _core.EngineError) -> BaseException:
    kind, message = err.args
    if kind == "cancelled":
        return KeyboardInterrupt()
    if kind == "exists":
        message += " (pass overwrite=True / --overwrite to replace a previous gslice output)"
    return _ERRORS.get(kind, InternalError)(message)


def _raise(err: _core.EngineError) -> None:
    raise _error(err) from None


# -- operations ---------------------------------------------------------------------------

Op = dict


def copy() -> Op:
    return {"kind": "copy"}


def keep_rows(n: int) -> Op:
    """Keep rows [0, n) of the first dimension."""
    return {"kind": "rows", "ranges": [[0, n]]}


def keep_cols(n: int) -> Op:
    """Keep columns [0, n) of the last dimension."""
    return {"kind": "cols", "ranges": [[0, n]]}


def keep_row_blocks(block: int, indices: Iterable[int]) -> Op:
    """Keep rows [i*block, (i+1)*block) for each i, in the given order."""
    return {"kind": "rows", "ranges": _block_ranges(block, indices)}


def keep_col_blocks(block: int, indices: Iterable[int]) -> Op:
    """Keep columns [i*block, (i+1)*block) for each i, in the given order."""
    return {"kind": "cols", "ranges": _block_ranges(block, indices)}


def output_shape(shape: Sequence[int], op: Op) -> tuple[int, ...]:
    """The shape an operation produces (the engine computes the same before writing)."""
    out = list(shape)
    if op["kind"] != "copy":
        axis = 0 if op["kind"] == "rows" else len(out) - 1
        out[axis] = sum(e - b for b, e in op["ranges"])
    return tuple(out)


def _block_ranges(block: int, indices: Iterable[int]) -> list[list[int]]:
    # Adjacent blocks merge into one range: fewer, longer copies for the engine.
    ranges: list[list[int]] = []
    for i in indices:
        b, e = i * block, (i + 1) * block
        if ranges and ranges[-1][1] == b:
            ranges[-1][1] = e
        else:
            ranges.append([b, e])
    return ranges


# -- plans --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """Group-wise symmetric quantization of a 2-D tensor (after its operation), in
    compressed-tensors' ``pack-quantized`` layout. The engine writes the packed int32 words
    under the TensorPlan's name, BF16 scales [rows, cols / group_size] under ``scale_name`` and
    the I64 shape [rows, cols] under ``shape_name``. ``weight`` is the name the unquantized
    tensor would have had (not sent to the engine)."""

    bits: int
    group_size: int
    scale_name: str
    shape_name: str
    weight: str
    scheme: ClassVar[str] = "compressed_tensors"

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "bits": self.bits, "group_size": self.group_size,
                "scale_name": self.scale_name, "shape_name": self.shape_name}

    def entries(self, name: str, rows: int, cols: int) -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            name: ((rows, -(-cols * self.bits // 32)), "I32"),
            self.scale_name: ((rows, cols // self.group_size), "BF16"),
            self.shape_name: ((2,), "I64"),
        }


@dataclass(frozen=True)
class AffineQuantization:
    """Group-wise affine (min/max) quantization of a 2-D tensor (after its operation), bit for
    bit what ``mx.quantize`` computes on CPU (see ``rust/engine/src/quant/affine.rs``). The
    engine writes U32 words [rows, cols * bits / 32] (32 / bits values per word, the first in
    the lowest bits) under the TensorPlan's name, then BF16 scales and BF16 biases [rows,
    cols / group_size] under ``scales_name`` and ``biases_name``. ``bits`` is 4 or 8,
    ``group_size`` 32, 64 or 128. ``weight`` is the name the unquantized tensor would have had."""

    bits: int
    group_size: int
    scales_name: str
    biases_name: str
    weight: str
    scheme: ClassVar[str] = "mlx_affine"

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "bits": self.bits, "group_size": self.group_size,
                "scales_name": self.scales_name, "biases_name": self.biases_name}

    def entries(self, name: str, rows: int, cols: int) -> dict[str, tuple[tuple[int, ...], str]]:
        groups = (rows, cols // self.group_size)
        return {
            name: ((rows, cols * self.bits // 32), "U32"),
            self.scales_name: (groups, "BF16"),
            self.biases_name: (groups, "BF16"),
        }


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor. GGUF outputs only: ``stack`` (more sources whose ``op`` output is
    stacked after the source's along a new leading dimension), ``pad_rows`` (zero rows added
    up to this many), ``ggml`` (the GGML type it is stored as, required there) and ``imatrix``
    (an importance matrix for that type's quantizer: one weight per column)."""

    name: str
    source: str
    op: Op = field(default_factory=copy)
    quant: Quantization | AffineQuantization | None = None
    stack: tuple[str, ...] = ()
    pad_rows: int | None = None
    ggml: str | None = None
    imatrix: tuple[float, ...] | None = field(default=None, repr=False)

    @property
    def weight_name(self) -> str:
        """The tensor's name before quantization (its own name when not quantized)."""
        return self.quant.weight if self.quant else self.name

    def to_json(self) -> dict:
        out = {"name": self.name, "source": self.source, "op": self.op}
        if self.quant:
            out["quant"] = self.quant.to_json()
        if self.stack:
            out["stack"] = list(self.stack)
        if self.pad_rows is not None:
            out["pad_rows"] = self.pad_rows
        if self.ggml is not None:
            out["ggml"] = self.ggml
        if self.imatrix is not None:
            out["imatrix"] = list(self.imatrix)
        return out

    def shape(self, source_shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape (after the operation, a stack and padding), before any encoding."""
        shape = list(output_shape(source_shape, self.op))
        if self.stack:
            shape.insert(0, 1 + len(self.stack))
        if self.pad_rows is not None:
            shape[0] = self.pad_rows
        return tuple(shape)

    def entries(self, source_shape: Sequence[int], source_dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every safetensors entry the engine writes for this tensor
        (computed the same way as the engine does before writing)."""
        shape = self.shape(source_shape)
        if self.ggml is not None:
            return {self.name: (shape, self.ggml)}
        if self.quant is None:
            return {self.name: (shape, source_dtype)}
        rows, cols = shape
        return self.quant.entries(self.name, rows, cols)

    def nbytes(self, source_shape: Sequence[int], source_dtype: str) -> int:
        """Bytes this tensor occupies in the output (without a GGUF file's alignment padding)."""
        if self.ggml is not None:
            shape = self.shape(source_shape)
            return math.prod(shape[:-1]) * ggml_row_bytes(self.ggml, shape[-1])
        return sum(math.prod(s) * DTYPE_SIZES[d] for s, d in self.entries(source_shape, source_dtype).values())


@dataclass(frozen=True)
class Manifest:
    """A file the engine writes last into the output's temporary folder: ``fields`` plus
    ``"files": {name: {"size": n, "sha256": hex}}`` for every other file of the folder."""

    name: str
    fields: dict


@dataclass(frozen=True)
class MetaKv:
    """A GGUF key-value pair: ``type`` is a GGUF value type ("uint32", "float32", "string",
    ...) or "array" with ``item`` the type of its elements. Non-finite floats are given as the
    strings "inf", "-inf" and "nan"."""

    key: str
    type: str
    value: object
    item: str | None = None

    def to_json(self) -> dict:
        out = {"key": self.key, "type": self.type, "value": self.value}
        if self.item is not None:
            out["item"] = self.item
        return out


@dataclass
class OutputPlan:
    """An output folder (``container`` "safetensors"), or one file (``container`` "gguf", whose
    ``dir`` is the file's path, with ``metadata`` and no side files).

    A folder's shards carry ``shard_metadata`` as their safetensors ``__metadata__``; a shard
    can be shared by several outputs, so every output of one run must give the same. Its index
    (``model.safetensors.index.json``) is written when there are several shards, or always with
    ``index_always``; ``index_metadata`` adds entries beside ``total_size``."""

    dir: Path
    tensors: list[TensorPlan]
    text_files: dict[str, str] = field(default_factory=dict)
    copied_files: dict[str, Path] = field(default_factory=dict)
    overwrite: bool = False
    manifest: Manifest | None = None
    container: str = "safetensors"
    metadata: list[MetaKv] = field(default_factory=list)
    shard_metadata: dict[str, str] = field(default_factory=lambda: dict(SHARD_METADATA))
    index_always: bool = False
    index_metadata: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        files = [{"name": n, "text": t} for n, t in self.text_files.items()]
        files += [{"name": n, "copy_from": str(p)} for n, p in self.copied_files.items()]
        out = {
            "dir": str(self.dir),
            "overwrite": self.overwrite,
            "tensors": [t.to_json() for t in self.tensors],
            "files": files,
        }
        if self.container != "safetensors":
            out["container"] = self.container
            out["metadata"] = [kv.to_json() for kv in self.metadata]
        if self.index_always or self.index_metadata:
            out["index"] = {"always": self.index_always, "metadata": self.index_metadata}
        if self.manifest is not None:
            out["manifest"] = {"name": self.manifest.name, "fields": self.manifest.fields}
        return out


def shard_metadata(outputs: Sequence[OutputPlan]) -> dict[str, str]:
    """The ``__metadata__`` of every shard the run writes (the engine takes one for the run)."""
    found = {json.dumps(o.shard_metadata, sort_keys=True) for o in outputs if o.container == "safetensors"}
    if len(found) > 1:
        raise InternalError(f"the outputs of one run give different shard metadata ({', '.join(sorted(found))})")
    return json.loads(found.pop()) if found else dict(SHARD_METADATA)


# -- inspecting checkpoints ---------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    nbytes: int
    offset: int = 0  # of the first data byte in its shard file


@dataclass(frozen=True)
class CheckpointInfo:
    root: Path
    shards: tuple[Path, ...]
    tensors: dict[str, TensorInfo]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def inspect(path: str | os.PathLike) -> CheckpointInfo:
    """Opens a checkpoint, validates every shard header and the index, and lists its tensors."""
    try:
        raw = json.loads(_core.inspect(str(path)))
    except _core.EngineError as e:
        _raise(e)
    tensors = {
        t["name"]: TensorInfo(t["name"], t["dtype"], tuple(t["shape"]), t["shard"], t["nbytes"], t["offset"])
        for t in raw["tensors"]
    }
    return CheckpointInfo(Path(raw["root"]), tuple(Path(s["path"]) for s in raw["shards"]), tensors)


# -- executing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardReport:
    name: str
    bytes: int
    tensors: int
    piece: int  # the physical file behind the shard; outputs sharing it share one inode
    shared_by: int  # how many outputs of the run link this piece


@dataclass(frozen=True)
class FileReport:
    name: str
    bytes: int
    sha256: str | None  # None in a dry run, or when the output has no manifest


@dataclass(frozen=True)
class OutputReport:
    dir: Path
    shards: tuple[ShardReport, ...]
    files: tuple[FileReport, ...]
    tensors: int
    tensor_bytes: int
    file_bytes: int
    seconds: float  # time from the previous output's completion (or the start) to this one's


@dataclass(frozen=True)
class QuantReport:
    """One quantized tensor. Errors compare the dequantized values (``q * scale``, or
    ``q * scale + bias`` for the affine scheme) with the sliced source values; the ``rel_``
    figures divide them by the weight's RMS. ``parts`` names the entries written after the
    first (scales, shape or biases)."""

    name: str
    scheme: str
    parts: tuple[str, ...]
    source: str
    source_dtype: str
    shape: tuple[int, ...]
    bits: int
    group_size: int
    bytes_before: int
    bytes_after: int
    weight_rms: float
    rms_error: float
    max_abs_error: float
    rel_rms_error: float
    rel_max_abs_error: float


@dataclass(frozen=True)
class EngineReport:
    outputs: tuple[OutputReport, ...]
    quantized: tuple[QuantReport, ...]
    bytes_written: int
    bytes_kernel_copied: int
    bytes_gathered: int
    bytes_hashed: int
    distinct_tensors: int
    shard_files_written: int
    seconds: float
    threads: int
    dry_run: bool
    io: str  # how bytes moved: "linux-fast" or "portable"


def execute(
    source: str | os.PathLike,
    outputs: Sequence[OutputPlan],
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    dedupe: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
    band_bytes: int | None = None,
) -> EngineReport:
    """Writes every output atomically: each folder appears complete (manifest included) or not
    at all. Outputs are completed one after the other, so an interrupted run keeps the earlier
    ones. ``dry_run`` lays everything out and reports the files without creating any.
    ``band_bytes`` sets how many source bytes a strided or quantizing work item covers
    (default 16 MiB)."""
    plan = {
        "source": str(source),
        "outputs": [o.to_json() for o in outputs],
        "max_shard_size": max_shard_size,
        "dedupe": dedupe,
        "threads": threads,
        "band_bytes": band_bytes,
        "metadata": shard_metadata(outputs),
        "dry_run": dry_run,
        "portable_io": _portable_io(),
    }
    dirs = [Path(o.dir) for o in outputs]
    before = {d: _identity(d) for d in dirs}
    try:
        with interrupts.trapped(), staging.writing(d.parent for d in dirs):
            raw = json.loads(_core.execute(json.dumps(plan), progress))
            return _engine_report(raw)
    except KeyboardInterrupt as e:  # SIGINT, SIGTERM (see interrupts), or a cancelling callback
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        if dry_run:
            raise Interrupted(f"interrupted ({name}) during a dry run: nothing was written", signum) from None
        outcome = WriteOutcome.of(dirs, before)
        raise Interrupted(f"interrupted ({name}): {outcome.describe()}", signum, outcome.complete) from None
    except _core.EngineError as e:
        err = _error(e)
        outcome = WriteOutcome.of(dirs, before)
        if outcome.complete and not dry_run:
            err = type(err)(f"{err}; {outcome.describe()}")
        raise err from None


def _engine_report(raw: dict) -> EngineReport:
    outs = tuple(
        OutputReport(
            dir=Path(o["dir"]),
            shards=tuple(ShardReport(**s) for s in o["shards"]),
            files=tuple(FileReport(**f) for f in o["files"]),
            tensors=o["tensors"],
            tensor_bytes=o["tensor_bytes"],
            file_bytes=o["file_bytes"],
            seconds=o["seconds"],
        )
        for o in raw.pop("outputs")
    )
    quantized = tuple(
        QuantReport(**{**q, "shape": tuple(q["shape"]), "parts": tuple(q["parts"])}) for q in raw.pop("quantized")
    )
    return EngineReport(outputs=outs, quantized=quantized, **raw)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class WriteOutcome:
    """What a run that did not finish left on disk, found by looking (not assumed)."""

    complete: tuple[Path, ...]  # finished and renamed into place by this run
    unchanged: tuple[Path, ...]  # existed before the run and are untouched
    absent: tuple[Path, ...]
    temporary: tuple[Path, ...]  # this process's temporary folders still there

    @classmethod
    def of(cls, dirs: Sequence[Path], before: dict) -> "WriteOutcome":
        complete, unchanged, absent = [], [], []
        for d in dirs:
            now = _identity(d)
            (absent if now is None else unchanged if now == before[d] else complete).append(d)
        temporary = staging.own(d.parent for d in dirs)
        return cls(tuple(complete), tuple(unchanged), tuple(absent), tuple(temporary))

    def describe(self) -> str:
        n = len(self.complete) + len(self.unchanged) + len(self.absent)
        if n == 1:
            if self.complete:
                text = f"{self.complete[0]} is complete: it was finished and put in place before the run stopped"
            elif self.unchanged:
                text = f"nothing was written: the previous output {self.unchanged[0]} is unchanged"
            else:
                text = f"nothing was written: {self.absent[0]} does not exist"
        else:
            names = ", ".join(d.name for d in self.complete[:5]) + (", ..." if len(self.complete) > 5 else "")
            done = f"all {n}" if len(self.complete) == n else f"{len(self.complete)} of {n}"
            text = f"{done} outputs are complete" + (f" ({names})" if names else "")
            if len(self.complete) < n:
                text += f"; the other {n - len(self.complete)} were not written"
            if self.unchanged:
                text += f" ({len(self.unchanged)} previous outputs among them are unchanged)"
        if self.temporary:
            return text + "; temporary folders remain: " + ", ".join(map(str, self.temporary))
        return text + "; no temporary files are left"


# -- checking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    tensor: str
    problem: str


@dataclass(frozen=True)
class CompareReport:
    tensors: int
    bytes_compared: int
    mismatches: tuple[Mismatch, ...]


def compare(
    source: str | os.PathLike,
    output: str | os.PathLike,
    tensors: Sequence[TensorPlan],
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Compares every tensor of the checkpoint at ``output`` with what its plan takes from
    ``source``, byte for byte; also reports tensors missing from, or extra in, the output."""
    plan = {
        "source": str(source), "output": str(output), "tensors": [t.to_json() for t in tensors], "threads": threads,
        "portable_io": _portable_io(),
    }
    try:
        with interrupts.trapped():
            raw = json.loads(_core.compare(json.dumps(plan), progress))
    except _core.EngineError as e:
        _raise(e)
    return CompareReport(raw["tensors"], raw["bytes_compared"], tuple(Mismatch(**m) for m in raw["mismatches"]))


def compare_gguf(
    source: str | os.PathLike,
    output: str | os.PathLike,
    tensors: Sequence[TensorPlan],
    offsets: dict[str, int],
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Compares the data of every tensor of the GGUF file ``output`` (at ``offsets``, read from
    its header) with what its plan derives from ``source``, byte for byte."""
    plan = {"source": str(source), "output": str(output), "tensors": [t.to_json() for t in tensors],
            "offsets": offsets, "threads": threads}
    try:
        raw = json.loads(_core.compare_gguf(json.dumps(plan), progress))
    except _core.EngineError as e:
        _raise(e)
    return CompareReport(raw["tensors"], raw["bytes_compared"], tuple(Mismatch(**m) for m in raw["mismatches"]))


def sha256_files(
    paths: Sequence[str | os.PathLike], progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Hex SHA-256 of each file, hashed in parallel without holding the GIL."""
    try:
        with interrupts.trapped():
            return _core.sha256_files([str(p) for p in paths], progress)
    except _core.EngineError as e:
        _raise(e)
