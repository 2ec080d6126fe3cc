"""GGUF: one file for llama.cpp (and the applications built on it), written by the engine in
the same streaming pass as any slice. Gemma 3n's names, transforms and metadata are in
:mod:`.gguf_gemma3n`; this module holds the format itself:

* the file types (``--gguf-type``); the GGML type of every tensor, chosen as llama.cpp's own
  tools choose it for the same file type, is in :mod:`.gguf_types` (its converter for f32,
  f16, bf16 and q8_0, its quantizer for q4_0 and the K-quant types);
* an optional importance matrix for the quantizer types (``--imatrix``, :mod:`.gguf_imatrix`),
  used as llama-quantize uses it;
* the tokenizer (:mod:`.gguf_tokenizer`);
* ``general.*`` (name, size label, base model = the source repo, file type, quantization
  version) through the ``gguf`` package's writer, used here as a key-value builder;
* the ownership marker and check: the key ``gslice.manifest`` holds the manifest, including
  ``file_sha256``, the SHA-256 of the file with those 64 digits read as ``0``
  (docs/design.md, "Who wrote this?").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from .. import engine, gemma3n, ownership
from ..engine import MetaKv, TensorPlan
from ..arguments import path_arg
from ..errors import InternalError, SourceError, SpecError
from . import gguf_gemma3n as g3n
from . import gguf_imatrix, gguf_tokenizer
from . import gguf_types as gt
from .base import guard_runtime

if TYPE_CHECKING:
    from ..slicing import SlicePlan

# The file types, from the largest to the smallest: the converter's, then the quantizer's
# (q4_k_m: what Ollama and LM Studio offer by default).
TYPES = ("f32", "bf16", "f16", "q8_0", "q6_k", "q5_k_m", "q5_k", "q4_k_m", "q4_k", "q4_0")
QUANTIZER_TYPES = tuple(t for t in TYPES if t in gt.MIXES)
SOURCE_TYPE = gt.LOSSLESS_TYPE
MANIFEST_KEY = "gslice.manifest"
DIGEST_FIELD = "file_sha256"
ALIGNMENT = 32
TEXT_ONLY_NOTE = "text decoder only: llama.cpp's Gemma 3n is text-only, the audio and vision towers are not written"


@dataclass(frozen=True)
class GGUF:
    """One GGUF file for llama.cpp. ``type``: the file type (:data:`TYPES`; None: the source's
    dtype): "f32", "bf16", "f16", "q8_0" as llama.cpp's converter writes them; "q4_k_m",
    "q5_k_m", "q6_k", "q4_0" and the pure "q4_k", "q5_k" as its quantizer writes them from
    the lossless file. Each tensor's own type follows llama.cpp's tools for that file type
    (norms stay f32, ...). ``imatrix``: an importance matrix file of llama.cpp's imatrix tool
    for the source model, for the quantizer types. Only the text decoder is written."""

    type: str | None = None
    imatrix: str | os.PathLike | None = None

    name: ClassVar[str] = "gguf"

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in TYPES:
            raise SpecError(f"gguf type: {self.type!r} is not supported (choose {', '.join(TYPES)})")
        if self.imatrix is None:
            return
        path_arg(self.imatrix, "imatrix")
        if self.type not in QUANTIZER_TYPES:
            raise SpecError(
                f"--imatrix: a {self.type or 'source-dtype'} file is written as llama.cpp's converter writes it, which "
                f"reads no importance matrix (give one of {', '.join(QUANTIZER_TYPES)})"
            )

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "type": self.type}
        if self.imatrix is not None:
            path = Path(self.imatrix).expanduser().absolute()
            out["imatrix"] = {"file": str(path), "sha256": gguf_imatrix.digest(path)}
        return out

    @classmethod
    def from_json(cls, data: dict, where: str) -> "GGUF":
        recorded = data.get("imatrix")
        if not recorded:
            return cls(data.get("type"))
        path = Path(recorded["file"])
        if not path.is_file():
            raise SourceError(f"{where}: the importance matrix {path} it was made with is gone")
        if gguf_imatrix.digest(path) != recorded.get("sha256"):
            raise SourceError(f"{where}: the importance matrix {path} changed since the file was written (its sha256 differs)")
        return cls(data.get("type"), path)

    def prepare(self, plan: "SlicePlan") -> "GGUFOutput":
        guard(plan)
        dtype = source_dtype(plan)
        file_type = self.type or SOURCE_TYPE[dtype]
        imatrix = gguf_imatrix.read(self.imatrix) if self.imatrix is not None else None
        src = plan.checkpoint.tensors
        tensors, shapes = [], []
        for t in g3n.tensors(plan):
            first = t.sources[0]
            tp = TensorPlan(t.name, first.source, first.op, stack=tuple(s.source for s in t.sources[1:]), pad_rows=t.pad_rows)
            tensors.append(tp)
            shapes.append((t.name, tp.shape(src[first.source].shape)))
        types = gt.tensor_types(shapes, file_type, dtype, len(plan.resolved.kept), imatrix is not None)
        tensors = [replace(tp, ggml=types[tp.name]) for tp in tensors]
        if imatrix is None:
            return GGUFOutput(tuple(tensors), file_type, dtype)
        tensors, unweighted = with_imatrix(tensors, dict(shapes), imatrix, plan, dtype)
        return GGUFOutput(tuple(tensors), file_type, dtype, imatrix, tuple(unweighted))


def with_imatrix(tensors: list[TensorPlan], shapes: dict, imatrix: "gguf_imatrix.ImportanceMatrix", plan: "SlicePlan",
                 dtype: str) -> tuple[list[TensorPlan], list[str]]:
    """Every tensor the quantizer changes (its type differs from the lossless file's) looks its
    entry up, which must fit the source tensor; the types whose quantizer reads one get it.
    Also returns the tensors of such types that the file has no entry for."""
    src = plan.checkpoint.tensors
    out, unweighted = [], []
    for tp in tensors:
        if tp.ggml == gt.converter_type(tp.name, shapes[tp.name], SOURCE_TYPE[dtype]):
            out.append(tp)
            continue
        if tp.stack:
            raise InternalError(f"{tp.name}: a stacked tensor is quantized, which llama.cpp's quantizer never does")  # pragma: no cover
        weights = imatrix.for_tensor(tp.name, plan.resolved.kept, tp.source, src[tp.source].shape[-1], tp.op)
        if tp.ggml in IMATRIX_GGML:
            if weights is None:
                unweighted.append(tp.name)
            else:
                tp = replace(tp, imatrix=tuple(weights.tolist()))
        out.append(tp)
    return out, unweighted


# The GGML types whose llama.cpp quantizer reads an importance matrix (ggml_quantize_chunk).
IMATRIX_GGML = ("q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K")


def guard(plan: "SlicePlan") -> None:
    """Refuses a slice that llama.cpp would refuse or compute wrong (:func:`.base.guard_runtime`)."""
    guard_runtime(plan, "llama.cpp", "--format gguf")


def source_dtype(plan: "SlicePlan") -> str:
    """The dtype of the source's text decoder (one for all its tensors, as published)."""
    prefix = plan.arch.prefix
    found = {t.dtype for n, t in plan.checkpoint.tensors.items() if n.startswith(prefix)}
    if len(found) != 1:
        raise SourceError(f"GGUF: the source's text decoder mixes dtypes ({', '.join(sorted(found))}); one is expected")
    return found.pop()


# -- sizes ------------------------------------------------------------------------------


def ggml_bytes(shape: Sequence[int], ggml: str) -> int:
    return math.prod(shape[:-1]) * engine.ggml_row_bytes(ggml, shape[-1])


def data_bytes(shapes: Sequence[tuple[Sequence[int], str]]) -> int:
    """Bytes of the data section for tensors (shape, GGML type), each aligned as written."""
    return sum(-(-ggml_bytes(s, t) // ALIGNMENT) * ALIGNMENT for s, t in shapes)


# -- one output file ----------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFOutput:
    tensors: tuple[TensorPlan, ...]
    file_type: str
    source_dtype: str
    imatrix: "gguf_imatrix.ImportanceMatrix | None" = None
    unweighted: tuple[str, ...] = ()  # quantized with a type that reads one, but without an entry

    def config_text(self) -> str:
        raise InternalError("a GGUF output has no config.json")  # pragma: no cover

    def output_plan(self, plan: "SlicePlan", out, *, overwrite: bool, manifest: engine.Manifest | None, title: str | None = None) -> engine.OutputPlan:
        return engine.OutputPlan(
            dir=Path(out).expanduser().absolute(),
            tensors=list(self.tensors),
            overwrite=overwrite,
            manifest=engine.Manifest(MANIFEST_KEY, manifest.fields) if manifest else None,
            container="gguf",
            metadata=self.metadata(plan, Path(out).stem, title),
        )

    def metadata(self, plan: "SlicePlan", name: str, title: str | None = None) -> list[MetaKv]:
        """Every key-value pair but the manifest, in the converter's order; with an importance
        matrix, the keys llama-quantize adds for it last."""
        import gguf

        w = gguf.GGUFWriter(path=None, arch=g3n.ARCH)
        w.add_type(gguf.GGUFType.MODEL)
        general_metadata(plan, title or name, self.total_params(plan)).set_gguf_meta_model(w)
        g3n.add_metadata(w, plan, gguf.LlamaFileType(gt.file_type_id(self.file_type)))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_tokenizer.add_tokenizer(w, plan.source.files, g3n.vocab_size(plan))
        kvs = [_kv(key, v) for key, v in w.kv_data[0].items()]
        if self.imatrix is not None:
            kvs += [MetaKv(key, kind, value) for key, kind, value in self.imatrix.metadata()]
        return kvs

    def total_params(self, plan: "SlicePlan") -> int:
        """Elements of every tensor written (the padded embeddings included), as the
        converter counts them for ``general.size_label``."""
        src = plan.checkpoint.tensors
        return sum(math.prod(t.shape(src[t.source].shape)) for t in self.tensors)

    def describe(self, plan: "SlicePlan") -> dict:
        src = plan.checkpoint.tensors
        types = Counter(t.ggml for t in self.tensors)
        return {
            "name": "gguf",
            "type": self.file_type,
            "file_type": gt.file_type_id(self.file_type),
            "tensor_types": dict(sorted(types.items())),
            "tensors": len(self.tensors),
            "params": self.total_params(plan),
            "tensor_bytes": sum(t.nbytes(src[t.source].shape, src[t.source].dtype) for t in self.tensors),
            **({"imatrix": self.imatrix_use()} if self.imatrix is not None else {}),
            "note": TEXT_ONLY_NOTE,
        }

    def imatrix_use(self) -> dict:
        """The importance matrix's file, its entry count, and the quantized tensors with and
        without an entry (llama-quantize says "did not find weights" for the latter)."""
        return {"file": self.imatrix.path.name, "entries": len(self.imatrix.entries),
                "tensors_with": sum(t.imatrix is not None for t in self.tensors), "tensors_without": list(self.unweighted)}

    def figures(self, plan: "SlicePlan") -> dict | None:
        return None

    def report(self, plan: "SlicePlan", figures: dict | None, result: engine.EngineReport) -> dict | None:
        return None


def _kv(key: str, v) -> MetaKv:
    """A gguf.GGUFValue as the engine's typed metadata."""
    import gguf

    def scalar(x):
        if isinstance(x, (bytes, bytearray)):
            try:
                return x.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError(f"GGUF: a value of {key} is not UTF-8 text: {bytes(x)[:40]!r}") from None
        if isinstance(x, float) and not math.isfinite(x):
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if hasattr(x, "item"):  # numpy scalars
            return scalar(x.item())
        return x

    if v.type == gguf.GGUFValueType.ARRAY:
        items = list(v.value)
        sub = v.sub_type or (gguf.GGUFValueType.get_type(items[0]) if items else gguf.GGUFValueType.UINT8)
        return MetaKv(key, "array", [scalar(x) for x in items], sub.name.lower())
    return MetaKv(key, v.type.name.lower(), scalar(v.value))


def general_metadata(plan: "SlicePlan", name: str, total_params: int):
    """``general.*``: the name, the size label, the license, and the source repo as the base
    model (a local source has none)."""
    import gguf

    src = plan.source
    base = []
    if src.repo_id:
        org, _, repo = src.repo_id.rpartition("/")
        entry = {"name": repo, "repo_url": f"https://huggingface.co/{src.repo_id}"}
        if org:
            entry["organization"] = org
        base.append(entry)
    return gguf.Metadata(
        name=name,
        size_label=gguf.size_label(total_params, total_params, 0, 0),
        license="gemma",
        base_models=base or None,
        tags=["gslice", "matformer", "gemma3n"],
    )


# -- reading back: the manifest and the file's own digest ---------------------------------


def read_manifest(path: Path) -> dict:
    """The manifest a GGUF file carries; SourceError when it has none (not gslice's)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} cannot be read as a GGUF file: {e}") from None
    field_ = reader.fields.get(MANIFEST_KEY)
    if field_ is None:
        raise SourceError(f"{path} has no {MANIFEST_KEY}: it was not written by gslice, so there is nothing to check it against")
    try:
        data = json.loads(field_.contents())
    except (ValueError, TypeError) as e:
        raise SourceError(f"{path}: {MANIFEST_KEY} is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get(DIGEST_FIELD), str):
        raise SourceError(f"{path}: {MANIFEST_KEY} has no {DIGEST_FIELD}")
    return data


def is_gslice_file(path: Path) -> bool:
    """Whether ``path`` is a GGUF file gslice wrote (its metadata holds the manifest): what may
    be replaced by --overwrite (:mod:`gslice.ownership`). Only reads."""
    try:
        read_manifest(path)
    except Exception:  # noqa: BLE001 - any file that cannot be read as one is not ours
        return False
    return True


ownership.register_file_format("gguf", is_gslice_file)


def file_digest(path: Path, recorded: str) -> str:
    """SHA-256 of the file with the recorded digest's 64 digits read as zeros."""
    h = hashlib.sha256()
    marker = f'"{DIGEST_FIELD}":"{recorded}"'.encode()
    with open(path, "rb") as f:
        head = f.read(64 << 20)
        at = head.find(marker)
        if at < 0:
            raise SourceError(f"{path}: its manifest digest is not where the manifest is")
        digits = at + len(marker) - 65
        head = head[:digits] + b"0" * 64 + head[digits + 64 :]
        h.update(head)
        for chunk in iter(lambda: f.read(16 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path) -> tuple[dict, list[str]]:
    """The manifest and the problems with the file: its digest must match."""
    data = read_manifest(path)
    problems = []
    size = path.stat().st_size
    if data.get("size") not in (None, size):
        problems.append(f"{size} bytes, the manifest says {data['size']}")
    if file_digest(path, data[DIGEST_FIELD]) != data[DIGEST_FIELD]:
        problems.append("sha256 differs from the manifest (the file changed after it was written)")
    return data, problems


def compare_file(path: Path, plan: "SlicePlan") -> tuple[list[str], dict[str, int]]:
    """Differences between a GGUF file's header and what ``plan`` writes (tensor names, GGML
    types and shapes; every metadata value but the file's name and its manifest), and each
    tensor's data offset, for the engine to compare the data."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    problems = []
    stored = {t.name: t for t in reader.tensors}
    src = plan.checkpoint.tensors
    for t in plan.tensors:
        s = stored.get(t.name)
        shape = list(t.shape(src[t.source].shape))
        if s is None:
            problems.append(f"tensor {t.name} is missing from the file")
        elif s.tensor_type.name.lower() != t.ggml.lower() or [int(d) for d in reversed(s.shape)] != shape:
            problems.append(f"tensor {t.name} is {s.tensor_type.name.lower()} {[int(d) for d in reversed(s.shape)]}, expected {t.ggml.lower()} {shape}")
    problems += [f"tensor {n} is not produced by the spec (unexpected tensor)" for n in sorted(set(stored) - {t.name for t in plan.tensors})]
    name = reader.fields["general.name"].contents() if "general.name" in reader.fields else path.stem
    want = {kv.key: kv for kv in plan.output.metadata(plan, name)}
    have = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.") and k != MANIFEST_KEY}
    for key in sorted(set(want) | set(have)):
        if key not in have:
            problems.append(f"metadata {key} is missing from the file")
        elif key not in want:
            problems.append(f"metadata {key} is not written by the spec (unexpected key)")
        elif not _same_value(want[key], have[key].contents(), np):
            problems.append(f"metadata {key} differs from what the spec derives from the source")
    return problems, {t.name: int(t.data_offset) for t in reader.tensors}


def _same_value(kv: MetaKv, value, np) -> bool:
    floats = "float32" in (kv.type, kv.item)
    want = kv.value if isinstance(kv.value, list) else [kv.value]
    have = value if isinstance(value, list) else [value]
    if len(want) != len(have):
        return False
    if floats:
        return np.array_equal(np.array([float(x) for x in want], np.float32), np.array(have, np.float32), equal_nan=True)
    return want == have


# -- sizes from shapes alone --------------------------------------------------------------


def file_tensor_bytes(arch: "gemma3n.Architecture", res: "gemma3n.Resolved", shapes: dict[str, Sequence[int]],
                      new_config: dict, file_type: str, source_dtype: str = "BF16") -> int:
    """The data section of the GGUF file a slice becomes, from output shapes alone (no
    weights): every text-decoder tensor at its GGML type for ``file_type``, aligned as written.
    The metadata (mostly the tokenizer: about 6 MB for Gemma 3n's 262,400 tokens) comes on top."""
    tensors = file_tensors(arch, res, shapes, new_config)
    types = gt.tensor_types(list(tensors.items()), file_type, source_dtype, len(res.kept))
    return data_bytes([(shape, types[name]) for name, shape in tensors.items()])


def file_tensors(arch: "gemma3n.Architecture", res: "gemma3n.Resolved", shapes: dict[str, Sequence[int]],
                 new_config: dict) -> dict[str, tuple[int, ...]]:
    """llama.cpp's name -> shape of every tensor of the GGUF file of a slice whose output
    shapes are ``shapes``: the text decoder renamed, stacked, and padded to the vocabulary."""
    prefix = gemma3n.output_prefix(arch, res.spec)
    vocab = int(gemma3n.text_config(new_config).get("vocab_size", 262_400))
    out: dict[str, tuple[int, ...]] = {}
    stacked: dict[str, list[tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        role = gemma3n.tensor_role(name, len(shape), prefix)
        if role.part != "text":
            continue
        if role.layer is not None:
            out[f"blk.{role.layer}.{g3n.LAYER_NAMES[role.kind]}"] = tuple(shape)
        elif role.kind in g3n.STACKED_NAMES:
            stacked.setdefault(g3n.STACKED_NAMES[role.kind], []).append(tuple(shape))
        else:
            gname = g3n.MODEL_NAMES[role.kind]
            out[gname] = (vocab, *shape[1:]) if gname in g3n.PADDED_TO_VOCAB else tuple(shape)
    for gname, members in stacked.items():
        out[gname] = (len(members), *members[0])
    return out
