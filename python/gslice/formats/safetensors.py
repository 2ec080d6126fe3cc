"""The Hugging Face checkpoint: safetensors shards, their index, config.json, the tokenizer and
processor files and a model card; optionally with weight-only quantization in compressed-tensors'
``pack-quantized`` format, as transformers (with the compressed-tensors package) and vLLM load it.

What is written for a quantized Linear weight ``<module>.weight`` of shape [rows, cols]
(matching compressed-tensors 0.20's ``PackedQuantizationCompressor``):

* ``<module>.weight_packed``: I32 [rows, ceil(cols * bits / 32)]: ``q + 2**(bits-1)`` as
  unsigned ``bits``-bit fields, 32 / bits per word, the first element in the lowest bits
  (``pack_to_int32``);
* ``<module>.weight_scale``: BF16 [rows, cols / group_size];
* ``<module>.weight_shape``: I64 [2] = (rows, cols).

No ``weight_zero_point``: the scheme is symmetric and the library drops symmetric zero points.
int8 uses the same ``pack-quantized`` format with 8 bits (4 values per word): for weight-only
int8, compressed-tensors' own format inference picks ``pack-quantized`` (its ``int-quantized``
compressor only claims schemes that also quantize activations, W8A8), and it is the only int8
weight-only format vLLM's compressed-tensors loader accepts (``CompressedTensorsWNA16``).

The values (computed by the Rust engine, see ``rust/engine/src/quant/symmetric.rs``): per row and group
of ``group_size`` columns, ``scale = bf16(absmax / 7.5)`` (int4) or ``/ 127.5`` (int8), a zero
scale replaced by 2**-7 (bf16 epsilon); ``q = round_half_even(clamp(x / scale, qmin, qmax))``
with the division in float32.

Which weights are quantized comes from the tensors' roles (:mod:`gslice.formats.base`): the
``decoder`` targets always, the ``embeddings`` and ``audio`` targets on request; every other
Linear module is named in the config's ignore list, and ``lm_head`` (tied to the token
embeddings, so not stored) too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Sequence

from .. import engine, gemma3n
from ..engine import Quantization, TensorPlan
from ..errors import SpecError
from .base import Role, SlicedTensor, quantization_report

if TYPE_CHECKING:
    from ..slicing import SlicePlan

SCHEMES = {"int4": 4, "int8": 8}
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 128
FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"
# Not stored (tied to the token embeddings) but a Linear module transformers would otherwise target.
TIED_HEAD = "lm_head"


@dataclass(frozen=True)
class QuantOptions:
    """A quantization request: the scheme, the group size, and which optional parts
    (embeddings, the audio tower) to quantize as well."""

    scheme: str
    group_size: int = DEFAULT_GROUP_SIZE
    embeddings: bool = False
    audio: bool = False

    @property
    def bits(self) -> int:
        return SCHEMES[self.scheme]

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "bits": self.bits, "group_size": self.group_size, "format": FORMAT,
                "embeddings": self.embeddings, "audio": self.audio}

    @classmethod
    def from_json(cls, data: dict | None, where: str) -> "QuantOptions | None":
        """The options a manifest recorded (:meth:`to_json`), checked like user input."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise SpecError(f"{where}: quant must be an object, not {data!r}")
        return cls.build(data.get("scheme"), data.get("group_size"), data.get("embeddings", False), data.get("audio", False))

    @classmethod
    def build(cls, quant=None, group_size=None, quant_embeddings=False, quant_audio=False) -> "QuantOptions | None":
        """Checks values from Python callers or the CLI; None when nothing is quantized."""
        if quant is None:
            given = [n for n, v in (("group_size", group_size), ("quant_embeddings", quant_embeddings),
                                    ("quant_audio", quant_audio)) if v not in (None, False)]
            if given:
                raise SpecError(f"{given[0]} needs quant='int4' or 'int8' (--quant)")
            return None
        if not isinstance(quant, str) or quant not in SCHEMES:
            raise SpecError(f"quant: {quant!r} is not a supported scheme (choose {' or '.join(SCHEMES)})")
        if group_size is None:
            group_size = DEFAULT_GROUP_SIZE
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size not in GROUP_SIZES:
            raise SpecError(f"group_size: {group_size!r} is not supported (choose {', '.join(map(str, GROUP_SIZES))})")
        for name, v in (("quant_embeddings", quant_embeddings), ("quant_audio", quant_audio)):
            if not isinstance(v, bool):
                raise SpecError(f"{name}: {v!r} must be true or false")
        return cls(quant, group_size, quant_embeddings, quant_audio)

    def quantizes(self, role: Role) -> bool:
        """Whether this request targets a tensor of this role (before the group-size check)."""
        return role.target == "decoder" or (role.target == "embeddings" and self.embeddings) or (
            role.target == "audio" and self.audio
        )


@dataclass(frozen=True)
class Safetensors:
    """A Hugging Face checkpoint folder. ``quant="int4"`` or ``"int8"`` also quantizes the text
    decoder's Linear weights group-wise (``group_size`` 32, 64 or 128, default 128) in
    compressed-tensors' pack-quantized format; ``quant_embeddings`` adds the per-layer
    embedding table, ``quant_audio`` the audio tower's Linear weights."""

    quant: str | None = None
    group_size: int | None = None
    quant_embeddings: bool = False
    quant_audio: bool = False

    name: ClassVar[str] = "safetensors"

    def __post_init__(self) -> None:
        QuantOptions.build(self.quant, self.group_size, self.quant_embeddings, self.quant_audio)

    @classmethod
    def of(cls, opts: QuantOptions | None) -> "Safetensors":
        if opts is None:
            return cls()
        return cls(opts.scheme, opts.group_size, opts.embeddings, opts.audio)

    @property
    def options(self) -> QuantOptions | None:
        return QuantOptions.build(self.quant, self.group_size, self.quant_embeddings, self.quant_audio)

    def to_json(self) -> dict:
        return {"name": self.name}

    def prepare(self, plan: "SlicePlan") -> "SafetensorsOutput":
        opts = self.options
        tensors = tuple(TensorPlan(t.name, t.source, t.op) for t in plan.sliced)
        config = dict(plan.new_config)
        qplan = None
        if opts is not None:
            qplan = plan_quantization(plan.sliced, plan.checkpoint, opts)
            tensors = qplan.tensors
            config["quantization_config"] = quantization_config(opts, qplan.ignore, qplan.extra_targets)
        return SafetensorsOutput(tensors, config, opts, qplan)


# -- quantization targets -----------------------------------------------------------------


@dataclass(frozen=True)
class QuantPlan:
    """Which output tensors are quantized, and what config.json must say about the rest."""

    tensors: tuple[TensorPlan, ...]
    # Linear modules left unquantized: the compressed-tensors ignore list.
    ignore: tuple[str, ...]
    # Non-Linear modules that are quantized (embeddings), targeted by exact name.
    extra_targets: tuple[str, ...]
    # Targets left in the source dtype, with the reason.
    kept: tuple[tuple[str, str], ...]


def plan_quantization(sliced: Sequence[SlicedTensor], ck: engine.CheckpointInfo, opts: QuantOptions) -> QuantPlan:
    """Marks the quantization targets among the slice's tensors. A target whose width (columns)
    is not a multiple of the group size stays in the source dtype (e.g. laurel.linear_right,
    whose width is laurel_rank = 64 in E4B, with groups of 128), except a width the spec
    chooses (the FFN width of mlp.down_proj): then SpecError."""
    g = opts.group_size
    out, ignore, extra, kept = [], [TIED_HEAD], [], []
    for t in sliced:
        shape = engine.output_shape(ck.tensors[t.source].shape, t.op)
        plain = TensorPlan(t.name, t.source, t.op)
        if len(shape) == 2 and t.role.module is not None and opts.quantizes(t.role):
            if shape[-1] % g == 0:
                out.append(quantized(plain, opts))
                if t.role.module == "embedding":
                    extra.append(module_of(t.name))
                continue
            if gemma3n.is_spec_width(t.role):
                raise SpecError(
                    f"group_size {g}: the FFN width {shape[-1]} of output layer {t.role.layer} is not a multiple of it "
                    f"(mlp.down_proj is quantized in groups of {g} along that width); use FFN widths that are "
                    f"multiples of {g} or a smaller group size"
                )
            kept.append((t.name, f"width {shape[-1]} is not a multiple of the group size {g}"))
        out.append(plain)
        if t.role.module == "linear":
            ignore.append(module_of(t.name))
    return QuantPlan(tuple(out), tuple(ignore), tuple(extra), tuple(kept))


def is_packed(role: Role, shape: Sequence[int], group_size: int) -> bool:
    """Whether ``--quant`` (without --quant-embeddings / --quant-audio) packs a tensor of this
    role and shape: the rule :func:`plan_quantization` applies, so size estimates match the files."""
    return role.target == "decoder" and len(shape) == 2 and shape[-1] % group_size == 0


def packed_bytes(shape: Sequence[int], bits: int, group_size: int) -> int:
    """int32 words of packed values + bf16 scales + int64[2] shape."""
    rows, cols = shape
    return rows * math.ceil(cols * bits / 32) * 4 + rows * math.ceil(cols / group_size) * 2 + 2 * 8


def module_of(weight_name: str) -> str:
    """``a.b.weight`` -> ``a.b``: compressed-tensors names modules, not parameters."""
    return weight_name.removesuffix(".weight")


def quantized(tp: TensorPlan, opts: QuantOptions) -> TensorPlan:
    """The same tensor, written as packed words, scales and shape under the library's names."""
    module = module_of(tp.name)
    q = Quantization(opts.bits, opts.group_size, f"{module}.weight_scale", f"{module}.weight_shape", tp.name)
    return TensorPlan(f"{module}.weight_packed", tp.source, tp.op, q)


def quantization_config(opts: QuantOptions, ignore: Iterable[str], extra_targets: Iterable[str] = ()) -> dict:
    """The ``quantization_config`` of config.json. Every Linear module is a target unless
    ``ignore`` names it; ``extra_targets`` adds modules by exact name (embeddings)."""
    weights = {
        "num_bits": opts.bits,
        "type": "int",
        "symmetric": True,
        "group_size": opts.group_size,
        "strategy": "group",
        "dynamic": False,
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear", *extra_targets],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
        },
        "ignore": list(dict.fromkeys(ignore)),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


# -- one output folder --------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsOutput:
    tensors: tuple[TensorPlan, ...]
    config: dict
    quant: QuantOptions | None
    quant_plan: QuantPlan | None

    def config_text(self) -> str:
        """config.json as written into the output (and re-derived by `gslice verify`)."""
        return json.dumps(self.config, indent=2) + "\n"

    def output_plan(self, plan: "SlicePlan", out, *, overwrite: bool, manifest: engine.Manifest | None, title: str | None = None) -> engine.OutputPlan:
        from ..modelcard import model_card

        quantized = sum(1 for t in self.tensors if t.quant)
        return engine.OutputPlan(
            dir=Path(out).expanduser().absolute(),
            tensors=list(self.tensors),
            text_files={"config.json": self.config_text(), "README.md": model_card(plan, title, self.quant, quantized)},
            copied_files=gemma3n.files_to_copy(plan.source.files, plan.spec),
            overwrite=overwrite,
            manifest=manifest,
        )

    def describe(self, plan: "SlicePlan") -> dict:
        return {"name": "safetensors", "quant": self.quant.scheme if self.quant else None}

    def figures(self, plan: "SlicePlan") -> dict | None:
        """What the report says of the quantization before anything is written (None without)."""
        if self.quant is None:
            return None
        return {
            **self.quant.to_json(),
            "kept": [{"name": n, "reason": r} for n, r in self.quant_plan.kept],
            "output_bytes_unquantized": plan.unquantized_bytes(),
            "weight_of": {t.name: t.quant.weight for t in self.tensors if t.quant},
        }

    def report(self, plan: "SlicePlan", figures: dict | None, result: engine.EngineReport) -> dict | None:
        """Per quantized tensor: sizes and errors (:func:`.base.quantization_report`)."""
        return None if figures is None else quantization_report(figures, result)
