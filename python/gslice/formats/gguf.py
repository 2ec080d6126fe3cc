"""GGUF: one file for llama.cpp (and the applications built on it), written by the engine in
the same streaming pass as any slice. Gemma 3n's names, transforms and metadata are in
:mod:`.gguf_gemma3n`; this module holds the format itself:

* the file types (``--gguf-type``) and the GGML type of every tensor, chosen as llama.cpp's own
  tools choose them for the same file type: its converter (``convert_hf_to_gguf.py``) for f32,
  f16, bf16 and q8_0, its quantizer (``llama-quantize``, run on the converter's default
  output) for q4_0;
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
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from .. import engine, gemma3n, ownership
from ..engine import MetaKv, TensorPlan
from ..errors import InternalError, SourceError, SpecError
from . import gguf_gemma3n as g3n
from . import gguf_tokenizer
from .base import guard_runtime

if TYPE_CHECKING:
    from ..slicing import SlicePlan

TYPES = ("f32", "bf16", "f16", "q8_0", "q4_0")
# llama.cpp's LlamaFileType of each file type (general.file_type).
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}
# The converter's type for a source dtype when told nothing ("--outtype auto"): what
# llama-quantize starts from, and so what it leaves unquantized tensors in.
AUTO_TYPE = {"BF16": "bf16", "F16": "f16", "F32": "f16"}
SOURCE_TYPE = {"BF16": "bf16", "F16": "f16", "F32": "f32"}
MANIFEST_KEY = "gslice.manifest"
DIGEST_FIELD = "file_sha256"
ALIGNMENT = 32
TEXT_ONLY_NOTE = "text decoder only: llama.cpp's Gemma 3n is text-only, the audio and vision towers are not written"


@dataclass(frozen=True)
class GGUF:
    """One GGUF file for llama.cpp. ``type``: "f32", "bf16", "f16", "q8_0" or "q4_0" (the file
    type; None: the source's dtype). Each tensor's own type follows llama.cpp's tools for that
    file type (norms stay f32, ...). Only the text decoder is written."""

    type: str | None = None

    name: ClassVar[str] = "gguf"

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in TYPES:
            raise SpecError(f"gguf type: {self.type!r} is not supported (choose {', '.join(TYPES)})")

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "GGUF":
        return cls(data.get("type"))

    def prepare(self, plan: "SlicePlan") -> "GGUFOutput":
        guard(plan)
        dtype = source_dtype(plan)
        file_type = self.type or SOURCE_TYPE[dtype]
        tensors = []
        for t in g3n.tensors(plan):
            first = t.sources[0]
            tp = TensorPlan(t.name, first.source, first.op, stack=tuple(s.source for s in t.sources[1:]), pad_rows=t.pad_rows)
            shape = tp.shape(plan.checkpoint.tensors[first.source].shape)
            tensors.append(replace(tp, ggml=tensor_type(t.name, shape, file_type, dtype)))
        return GGUFOutput(tuple(tensors), file_type, dtype)


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


# -- tensor types -------------------------------------------------------------------------


def tensor_type(name: str, shape: Sequence[int], file_type: str, source_dtype: str) -> str:
    """The GGML type llama.cpp's tools give this tensor in a file of ``file_type``."""
    if file_type == "q4_0":
        return quantizer_type(name, shape, converter_type(name, shape, AUTO_TYPE[source_dtype]))
    return converter_type(name, shape, file_type)


def converter_type(name: str, shape: Sequence[int], file_type: str) -> str:
    """``convert_hf_to_gguf.py`` (``ModelBase.prepare_tensors``): vectors, norms, non-weights
    and AltUp's coefficient matrices in f32; the rest in the file type, a q8_0 row that is not
    whole blocks of 32 in f16 (its QuantError fallback)."""
    base = name.rsplit(".", 1)[0]
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "f32"
    if base.endswith((".altup_correct_coef", ".altup_predict_coef")):
        return "f32"
    if file_type == "q8_0" and shape[-1] % 32:
        return "f16"
    return file_type


def quantizer_type(name: str, shape: Sequence[int], current: str) -> str:
    """``llama-quantize`` to Q4_0 without an importance matrix (``src/llama-quant.cpp``):
    tensors it may not quantize keep their type; the token embeddings (tied to the output, as
    in Gemma 3n: both tables count) get the output's type, Q6_K, or Q8_0 for rows that are not
    whole blocks of 256; the rest Q4_0, or F16 for rows that are not whole blocks of 32."""
    if not quantizer_allows(name, shape):
        return current
    cols = shape[-1]
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "q6_K" if cols % 256 == 0 else "q8_0"
    return "q4_0" if cols % 32 == 0 else "f16"


def quantizer_allows(name: str, shape: Sequence[int]) -> bool:
    """``tensor_allows_quantization``: 2-D and up, a weight, not a norm, not AltUp's or LAuReL's
    small matrices, not the per-layer model projection."""
    if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not any(part in name for part in ("altup", "laurel", "per_layer_model_proj"))


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
        """Every key-value pair but the manifest, in the converter's order."""
        import gguf

        w = gguf.GGUFWriter(path=None, arch=g3n.ARCH)
        w.add_type(gguf.GGUFType.MODEL)
        general_metadata(plan, title or name, self.total_params(plan)).set_gguf_meta_model(w)
        g3n.add_metadata(w, plan, gguf.LlamaFileType(FILE_TYPES[self.file_type]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_tokenizer.add_tokenizer(w, plan.source.files, g3n.vocab_size(plan))
        return [_kv(key, v) for key, v in w.kv_data[0].items()]

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
            "file_type": FILE_TYPES[self.file_type],
            "tensor_types": dict(sorted(types.items())),
            "tensors": len(self.tensors),
            "params": self.total_params(plan),
            "tensor_bytes": sum(t.nbytes(src[t.source].shape, src[t.source].dtype) for t in self.tensors),
            "note": TEXT_ONLY_NOTE,
        }

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
    weights): every text-decoder tensor under llama.cpp's name, stacked and padded, at its
    GGML type, aligned as written. The metadata (mostly the tokenizer: about 6 MB for Gemma
    3n's 262,400 tokens) comes on top."""
    prefix = gemma3n.output_prefix(arch, res.spec)
    vocab = int(gemma3n.text_config(new_config).get("vocab_size", 262_400))
    out: list[tuple[tuple[int, ...], str]] = []
    stacked: dict[str, list[tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        role = gemma3n.tensor_role(name, len(shape), prefix)
        if role.part != "text":
            continue
        if role.layer is not None:
            gname, shape = f"blk.{role.layer}.{g3n.LAYER_NAMES[role.kind]}", tuple(shape)
        elif role.kind in g3n.STACKED_NAMES:
            stacked.setdefault(g3n.STACKED_NAMES[role.kind], []).append(tuple(shape))
            continue
        else:
            gname = g3n.MODEL_NAMES[role.kind]
            shape = (vocab, *shape[1:]) if gname in g3n.PADDED_TO_VOCAB else tuple(shape)
        out.append((shape, tensor_type(gname, shape, file_type, source_dtype)))
    for gname, members in stacked.items():
        shape = (len(members), *members[0])
        out.append((shape, tensor_type(gname, shape, file_type, source_dtype)))
    return data_bytes(out)

