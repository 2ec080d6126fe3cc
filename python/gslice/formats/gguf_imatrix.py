"""Importance matrices for the GGUF quantizer types (``--imatrix FILE``): the files llama.cpp's
``llama-imatrix`` writes, read as ``llama-quantize`` reads them, and their entries moved onto
a slice.

Both formats of the pinned llama.cpp (``common/imatrix-loader.cpp``, ``tools/quantize/
quantize.cpp`` ``load_imatrix``):

* GGUF (what ``llama-imatrix`` writes by default): for each weight ``<name>.in_sum2`` (F32,
  the summed squared activations of each column, one row per expert) and ``<name>.counts``
  (F32, one count per expert), and the keys ``imatrix.datasets``, ``imatrix.chunk_count``,
  ``imatrix.chunk_size`` (required). A weight's importance is ``in_sum2 / round(count)``, or 1
  where the count is 0.
* legacy ``.dat`` (``--output-format dat``): int32 entry count, then per entry an int32 name
  length, the name, int32 ``ncall``, int32 value count and the float32 values; optionally the
  int32 chunk count and an int32-length dataset name. A weight's importance is ``value /
  ncall`` (the value itself where ``ncall`` is 0).

The entries are named for the model the matrix was computed on: the SOURCE of the slice.
:func:`ImportanceMatrix.for_tensor` takes the entry of the source tensor an output tensor comes
from (``blk.{i}`` of the slice reads ``blk.{kept[i]}`` of the file; skipped layers' entries are
never read) and applies the tensor's column selection to it (a narrower FFN's ``ffn_down``
keeps the weights of its leading columns). An entry whose length is not the source tensor's
column count is refused, except for the token embeddings, whose mismatched entries
``llama-quantize`` ignores (``src/llama-quant.cpp`` 1281-1295). Like ``llama-quantize``, a
matrix with a NaN or infinite value is refused, and a tensor without an entry is quantized
without one.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SourceError
from .gguf_types import TOKEN_EMBEDDINGS

# The keys llama-quantize adds to the files it makes with an importance matrix (tools/quantize/
# quantize.cpp 77-80, 509-537), written as its kv overrides write them (strings, uint32).
FILE_KEY = "quantize.imatrix.file"
DATASET_KEY = "quantize.imatrix.dataset"
ENTRIES_KEY = "quantize.imatrix.entries_count"
CHUNKS_KEY = "quantize.imatrix.chunks_count"
# llama-quantize copies strings into 128-byte fields.
MAX_VALUE_BYTES = 127
_LAYER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class ImportanceMatrix:
    """An importance matrix as llama-quantize hands it to the quantizer: name -> one float32
    weight per column (per expert, back to back)."""

    path: Path
    entries: dict[str, np.ndarray]
    datasets: tuple[str, ...]
    chunk_count: int
    legacy: bool

    def metadata(self) -> list[tuple[str, str, object]]:
        """(key, type, value) of the keys llama-quantize records: the file (here its name, where
        llama-quantize writes the path as typed), the first dataset, the entry count and the
        chunk count."""
        out: list[tuple[str, str, object]] = [(FILE_KEY, "string", _clip(self.path.name))]
        if self.datasets:
            out.append((DATASET_KEY, "string", _clip(self.datasets[0])))
        out.append((ENTRIES_KEY, "uint32", len(self.entries)))
        if self.chunk_count > 0:
            out.append((CHUNKS_KEY, "uint32", self.chunk_count))
        return out

    def for_tensor(self, name: str, kept: Sequence[int], source: str, source_cols: int, op: dict) -> np.ndarray | None:
        """The weights for output tensor ``name`` (llama.cpp's name in the slice), which is
        ``op`` of the source tensor ``source`` (``source_cols`` columns); None when the file has
        no usable entry."""
        key = source_name(name, kept)
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.size != source_cols:
            if name in TOKEN_EMBEDDINGS:
                return None
            raise SourceError(
                f"--imatrix {self.path.name}: {key} holds {entry.size} weights, but the source's {source} has "
                f"{source_cols} columns (an importance matrix of another model?)"
            )
        if op.get("kind") == "cols":
            entry = np.concatenate([entry[b:e] for b, e in op["ranges"]])
        return entry


def source_name(name: str, kept: Sequence[int]) -> str:
    """The file's name for a slice tensor: layer ``i`` of the slice is layer ``kept[i]`` of the
    source (llama.cpp's ``remap_imatrix`` for pruned layers does the same)."""
    return _LAYER.sub(lambda m: f"blk.{kept[int(m.group(1))]}.", name, count=1)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read(path: str | Path) -> ImportanceMatrix:
    """Reads either format; SourceError naming the file and the problem for anything else."""
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SourceError(f"--imatrix {p}: cannot be read: {e.strerror or e}") from None
    m = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    for key, values in m.entries.items():
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise SourceError(f"--imatrix {p.name}: {key} holds a non-finite weight ({values[bad[0]]} at {bad[0]}), which llama.cpp refuses")
    return m


def _read_gguf(p: Path) -> ImportanceMatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, OSError) as e:
        raise SourceError(f"--imatrix {p.name}: not a GGUF file llama.cpp reads: {e}") from None
    fields = reader.fields
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in fields]
    if missing:
        raise SourceError(f"--imatrix {p.name}: a GGUF file without {', '.join(missing)}: not an importance matrix llama-imatrix wrote")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix in ("in_sum2", "counts"):
            if t.name.endswith("." + suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise SourceError(f"--imatrix {p.name}: {t.name} is {t.tensor_type.name}; sums and counts must be F32")
                parts.setdefault(t.name[: -len(suffix) - 1], {})[suffix] = np.asarray(t.data, np.float32).reshape(-1)
    entries = {}
    for name, sc in sorted(parts.items()):
        if len(sc) != 2:
            raise SourceError(f"--imatrix {p.name}: {name} has {'no counts' if 'counts' not in sc else 'no sums'}")
        entries[name] = _normalized(p, name, sc["in_sum2"], sc["counts"])
    if not entries:
        raise SourceError(f"--imatrix {p.name}: holds no importance matrix entries")
    datasets = tuple(str(d) for d in (fields["imatrix.datasets"].contents() or []))
    return ImportanceMatrix(p, entries, datasets, int(fields["imatrix.chunk_count"].contents()), legacy=False)


def _normalized(p: Path, name: str, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``in_sum2 / count`` per expert, as load_imatrix computes it in float32."""
    if counts.size == 0 or sums.size % counts.size:
        raise SourceError(f"--imatrix {p.name}: {name} has {sums.size} sums for {counts.size} counts")
    per = sums.reshape(counts.size, -1)
    out = np.empty_like(per)
    for j, c in enumerate(counts):
        count = np.float32(_lround(float(c)))  # C: std::lround, then (float) of the int64
        out[j] = per[j] / count if count > 0 else np.float32(1)
    return out.reshape(-1)


def _lround(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _read_legacy(p: Path) -> ImportanceMatrix:
    data = p.read_bytes()
    at = 0

    def take(fmt: str, what: str):
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(data):
            raise SourceError(f"--imatrix {p.name}: ends inside {what} (neither a GGUF nor a legacy .dat importance matrix)")
        values = struct.unpack_from(fmt, data, at)
        at += size
        return values

    (n,) = take("<i", "the entry count")
    if n < 1:
        raise SourceError(f"--imatrix {p.name}: no entries (neither a GGUF nor a legacy .dat importance matrix)")
    entries = {}
    for i in range(n):
        (length,) = take("<i", f"entry {i + 1}'s name length")
        if length < 0:
            raise SourceError(f"--imatrix {p.name}: entry {i + 1} has a negative name length")
        (raw,) = take(f"<{length}s", f"entry {i + 1}'s name")
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        ncall, nval = take("<ii", f"entry {i + 1}'s counts")
        if nval < 1:
            raise SourceError(f"--imatrix {p.name}: entry {name} has {nval} values")
        values = np.array(take(f"<{nval}f", f"entry {name}'s values"), np.float32)
        entries[name] = values / np.float32(ncall) if ncall > 0 else values
    chunks, datasets = 0, ()
    if at + 4 <= len(data):
        (chunks,) = struct.unpack_from("<i", data, at)
        at += 4
        if at + 4 <= len(data):
            (length,) = struct.unpack_from("<i", data, at)
            if length > 0 and at + 4 + length <= len(data):
                datasets = (data[at + 4 : at + 4 + length].split(b"\0", 1)[0].decode("utf-8", "replace"),)
    return ImportanceMatrix(p, entries, datasets, chunks, legacy=True)


def _clip(text: str) -> str:
    """A string as llama-quantize's 128-byte override field holds it (127 bytes), cut at a
    character boundary."""
    b = text.encode()
    return text if len(b) <= MAX_VALUE_BYTES else b[:MAX_VALUE_BYTES].decode("utf-8", "ignore")
