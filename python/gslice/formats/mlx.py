"""MLX: a folder mlx-lm loads directly (``mlx_lm.generate --model OUT``), laid out as
``mlx_lm.convert`` writes it, optionally with MLX's affine quantization computed by the engine in
the same streaming pass as the slice. What mlx-lm 0.32.2 needs and what convert writes were
measured on tiny models (docs/mlx.md, ``tests/interop/mlx_probe.py``):

* files: ``model.safetensors`` (``model-0000k-of-0000n.safetensors`` above the shard size) with
  ``{"format": "mlx"}`` as safetensors metadata, ``model.safetensors.index.json`` even for one
  shard (``total_size`` and ``total_parameters``), ``config.json``, the source's tokenizer files
  and generation config, a model card (``library_name: mlx``) and gslice's manifest;
* the text decoder only, under ``model.language_model.*``: mlx-lm drops the audio and vision
  towers on load (``Model.sanitize``) and convert does not write them; mlx-vlm, which would use
  them, computes no Gemma 3n correctly (docs/mlx.md section 5). So whatever the spec says of the
  towers, none is written;
* config.json: the sliced multimodal config (``model_type`` gemma3n: mlx-lm has no
  ``gemma3n_text``), ``text_config.rope_theta`` and ``rope_local_base_freq`` taken from
  ``rope_parameters`` where the source has only those (transformers 5 writes no others; mlx-lm
  requires both), ``vision_config`` and ``_name_or_path`` removed, ``eos_token_id`` from
  generation_config.json, ``quantization`` and ``quantization_config`` when quantized; top-level
  keys sorted, indented by 4, as convert's ``save_config``;
* quantization (``bits`` 4 or 8, ``group_size`` 32, 64 or 128): exactly the modules
  ``mlx_lm.convert -q`` quantizes, i.e. every Linear and Embedding of the text model (mlx-lm
  builds each 2-D weight of Gemma 3n's decoder as one) whose input width is a multiple of the
  group size, embeddings included; the rest stays in the source dtype. A quantized module
  ``m`` is ``m.weight`` (U32, ``32 / bits`` values per word), ``m.scales`` and ``m.biases``
  (BF16), bit for bit what ``mx.quantize`` computes on CPU (``rust/engine/src/quant/affine.rs``).

Refused, in one line, before anything is written: a slice mlx-lm refuses or computes wrong
(:mod:`gslice.runtimes`), a source without a tokenizer (mlx-lm would load the folder with an
empty 5-token one, silently), a RoPE other than plain RoPE (mlx-lm ignores scaling), a text
config without a field mlx-lm requires, quantization of F32 or F16 weights (gslice's scales
and biases are BF16, which convert writes for BF16 weights only).

The KV-sharing layers' ``k_proj``, ``v_proj`` and ``k_norm``: mlx-lm builds them for every layer
and refuses a folder without them, but never reads a sharing layer's when it runs with its KV
cache (``mlx_lm.generate``, the server). A source saved by transformers >= 4.56 has none; then
each missing one is written as a copy of the same tensor of the layer whose keys and values the
sharing layer reads (its KV producer). Without a cache (``mlx_lm.perplexity``, LoRA training)
mlx-lm computes every Gemma 3n's sharing layers wrongly, with these tensors or the published ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from .. import engine, gemma3n
from ..engine import AffineQuantization, TensorPlan
from ..errors import SourceError, SpecError
from ..jsonfile import read_json
from .base import SlicedTensor, guard_runtime, quantization_report

if TYPE_CHECKING:
    from ..slicing import SlicePlan

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64  # mlx_lm.convert's default for affine quantization
MODE = "affine"
RUNTIME = "mlx-lm"
OPTION = "--format mlx"
SHARD_METADATA = {"format": "mlx"}
PREFIX = gemma3n.PREFIXES[gemma3n.MULTIMODAL_TYPE]  # mlx-lm's names: model.language_model.*
ARCHITECTURES = ["Gemma3nForConditionalGeneration"]
TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model")
# mlx-lm's TextConfig fields without a default (mlx_lm/models/gemma3n.py).
REQUIRED_TEXT_FIELDS = (
    "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "head_dim", "rms_norm_eps",
    "vocab_size", "num_key_value_heads", "num_kv_shared_layers", "vocab_size_per_layer_input", "sliding_window",
    "max_position_embeddings", "rope_local_base_freq", "rope_theta", "final_logit_softcapping", "layer_types",
    "activation_sparsity_pattern", "hidden_size_per_layer_input", "altup_num_inputs", "altup_coef_clip",
    "altup_correct_scale", "altup_active_idx", "laurel_rank",
)
TEXT_ONLY_NOTE = ("text decoder only, as mlx_lm.convert writes it: mlx-lm drops the audio and vision towers "
                  "on load, so they are not written")


@dataclass(frozen=True)
class MLX:
    """A folder for mlx-lm. ``bits`` None keeps the source's dtype (BF16 for the published
    checkpoints); 4 or 8 quantizes as ``mlx_lm.convert -q`` does (MLX affine, ``group_size`` 32,
    64 or 128, default 64). Only the text decoder is written (mlx-lm drops the towers)."""

    bits: int | None = None
    group_size: int | None = None

    name: ClassVar[str] = "mlx"

    def __post_init__(self) -> None:
        if self.bits is None:
            if self.group_size is not None:
                raise SpecError(f"mlx group_size {self.group_size!r} needs bits=4 or 8 (--mlx-bits)")
            return
        if not _is_int(self.bits) or self.bits not in BITS:
            raise SpecError(f"mlx bits: {self.bits!r} is not supported (choose {' or '.join(map(str, BITS))})")
        if self.group_size is not None and (not _is_int(self.group_size) or self.group_size not in GROUP_SIZES):
            raise SpecError(f"mlx group_size: {self.group_size!r} is not supported (choose {', '.join(map(str, GROUP_SIZES))})")

    @property
    def group(self) -> int | None:
        """The group size used (the default when quantizing without one), None unquantized."""
        return None if self.bits is None else self.group_size or DEFAULT_GROUP_SIZE

    def to_json(self) -> dict:
        return {"name": self.name, "bits": self.bits, "group_size": self.group}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "MLX":
        """The options a manifest recorded, checked like user input."""
        try:
            return cls(data.get("bits"), data.get("group_size"))
        except SpecError as e:
            raise SourceError(f"{where}: {e}") from None

    def prepare(self, plan: "SlicePlan") -> "MLXOutput":
        guard_runtime(plan, RUNTIME, OPTION)
        tokenizer_files(plan)
        text, filled = text_tensors(plan)
        tensors, kept = [], []
        shapes = plan.checkpoint.tensors
        for t in text:
            shape = engine.output_shape(shapes[t.source].shape, t.op)
            plain = TensorPlan(t.name, t.source, t.op)
            if self.bits is None or t.role.module is None or len(shape) != 2:
                tensors.append(plain)
            elif shape[-1] % self.group == 0:
                check_bf16(shapes[t.source].dtype, self.bits)
                tensors.append(quantize(plain, self.bits, self.group))
            else:
                tensors.append(plain)
                kept.append((t.name, f"input width {shape[-1]} is not a multiple of the group size {self.group}"))
        return MLXOutput(tuple(tensors), mlx_config(plan, self), self, tuple(kept), filled)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_bf16(dtype: str, bits: int) -> None:
    """gslice stores scales and biases in BF16: what ``mlx_lm.convert -q`` writes for BF16
    weights, not for others (it keeps F32 or F16 scales for those)."""
    if dtype != "BF16":
        raise SourceError(
            f"{OPTION} --mlx-bits {bits}: the source's weights are {dtype}, and gslice writes MLX scales and biases in "
            f"BF16, as mlx_lm.convert -q does only for BF16 weights (for {dtype} weights it keeps {dtype} scales); "
            "quantize a BF16 source, or write --format mlx without --mlx-bits and run mlx_lm.convert -q on it"
        )


def quantize(tp: TensorPlan, bits: int, group_size: int) -> TensorPlan:
    """``m.weight`` written as MLX's packed words, with ``m.scales`` and ``m.biases``."""
    module = tp.name.removesuffix(".weight")
    return replace(tp, quant=AffineQuantization(bits, group_size, f"{module}.scales", f"{module}.biases", tp.name))


# -- tensors ------------------------------------------------------------------------------


def text_tensors(plan: "SlicePlan") -> tuple[list[SlicedTensor], tuple[int, ...]]:
    """The slice's text decoder under mlx-lm's names, plus a copy of the KV producer's
    k_proj / v_proj / k_norm for every KV-sharing layer that has none (see the module
    docstring); and the output layers given such copies."""
    prefix = gemma3n.output_prefix(plan.arch, plan.spec)
    out = [replace(t, name=PREFIX + t.name[len(prefix):]) for t in plan.sliced if t.role.part == "text"]
    by_name = {t.name: t for t in out}
    new = gemma3n.sliced(plan.arch, plan.resolved)
    filled = []
    for layer in range(new.first_shared, new.num_layers):
        producer = new.producers[new.layer_types[layer]]
        for kind in gemma3n.KV_TENSORS:
            name = f"{PREFIX}layers.{layer}.{kind}"
            if name not in by_name:
                src = by_name[f"{PREFIX}layers.{producer}.{kind}"]
                out.append(SlicedTensor(name, src.source, src.op, replace(src.role, layer=layer)))
                filled.append(layer)
    return out, tuple(dict.fromkeys(filled))


def tokenizer_files(plan: "SlicePlan") -> dict[str, Path]:
    """The source's tokenizer and generation files (no processor: no tower is written);
    refused without a tokenizer model."""
    files = {n: p for n, p in gemma3n.files_to_copy(plan.source.files, plan.spec).items() if n in gemma3n.TOKENIZER_FILES}
    if not any(n in files for n in TOKENIZER_MODELS):
        raise SourceError(
            f"{OPTION}: the source has no tokenizer ({' or '.join(TOKENIZER_MODELS)}); mlx-lm would load the folder "
            "with an empty 5-token tokenizer without a word of warning"
        )
    return files


# -- config.json --------------------------------------------------------------------------


def mlx_config(plan: "SlicePlan", fmt: MLX) -> dict:
    """config.json as ``mlx_lm.convert`` writes it for the slice (see the module docstring)."""
    out = gemma3n.rewrite_config(plan.config, plan.arch, plan.resolved, text_model=False)
    if out.get("model_type") != gemma3n.MULTIMODAL_TYPE:  # a text-only source: mlx-lm reads only gemma3n
        text = {k: v for k, v in out.items() if k != "architectures"}
        out = {"architectures": ARCHITECTURES, "model_type": gemma3n.MULTIMODAL_TYPE, "text_config": text}
        for key in ("torch_dtype", "dtype"):
            if key in text:
                out[key] = text[key]
    text = out["text_config"]
    text.update(rope_bases(text))
    missing = [f for f in REQUIRED_TEXT_FIELDS if f not in text]
    if missing:
        raise SourceError(f"{OPTION}: mlx-lm requires text_config.{missing[0]}, which the source's config.json does not give"
                          + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    out.pop("_name_or_path", None)
    out.pop("vision_config", None)
    if (eos := generation_eos(plan.source.files)) is not None:
        out["eos_token_id"] = eos
    if fmt.bits is not None:
        block = {"group_size": fmt.group, "bits": fmt.bits, "mode": MODE}
        out["quantization"] = block
        out["quantization_config"] = dict(block)
    return dict(sorted(out.items()))


def rope_bases(text: dict) -> dict:
    """``rope_theta`` (full attention) and ``rope_local_base_freq`` (sliding), as the published
    configs name them; transformers 5 gives them per attention type in ``rope_parameters``.
    mlx-lm applies plain RoPE with these bases: any scaling is refused."""
    params = text.get("rope_parameters") or {}
    # per attention type (transformers 5's Gemma 3n), or one for all; rope_scaling: older configs
    kinds = [p for p in params.values() if isinstance(p, dict)] or [params]
    scaled = [p for p in (*kinds, text.get("rope_scaling") or {}) if _rope_type(p) != "default"]
    if scaled:
        raise SourceError(f"{OPTION}: the source's RoPE is scaled ({scaled[0]}); mlx-lm's Gemma 3n applies plain RoPE, "
                          "so its logits would be wrong")
    out = {}
    for field, kind in (("rope_theta", "full_attention"), ("rope_local_base_freq", "sliding_attention")):
        if field in text:
            continue
        value = params[kind].get("rope_theta") if isinstance(params.get(kind), dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SourceError(f"{OPTION}: mlx-lm requires text_config.{field}; the source's config.json gives neither it "
                              f"nor rope_parameters.{kind}.rope_theta")
        out[field] = value
    return out


def _rope_type(p: dict) -> str:
    return p.get("rope_type", p.get("type", "default")) if isinstance(p, dict) else "default"


def generation_eos(files: Path):
    """``eos_token_id`` of the source's generation_config.json, which convert copies into
    config.json (mlx-lm stops generating at any of them); None without one."""
    path = files / "generation_config.json"
    if not path.is_file():
        return None
    data = read_json(path, "generation config")
    return (data.get("eos_token_id") or None) if isinstance(data, dict) else None


# -- one output folder --------------------------------------------------------------------


@dataclass(frozen=True)
class MLXOutput:
    tensors: tuple[TensorPlan, ...]
    config: dict
    format: MLX
    kept: tuple[tuple[str, str], ...]  # 2-D weights left unquantized, with the reason
    filled_kv: tuple[int, ...]  # layers whose k/v are copies of their producer's

    def config_text(self) -> str:
        return json.dumps(self.config, indent=4)

    def total_parameters(self, plan: "SlicePlan") -> int:
        """Parameters of the model written, unquantized (the index's ``total_parameters``, as
        mlx-lm counts them: a quantized weight by its values, not its words)."""
        src = plan.checkpoint.tensors
        return sum(math.prod(t.shape(src[t.source].shape)) for t in self.tensors)

    def output_plan(self, plan: "SlicePlan", out, *, overwrite: bool, manifest: engine.Manifest | None, title: str | None = None) -> engine.OutputPlan:
        from ..modelcard import mlx_model_card

        return engine.OutputPlan(
            dir=Path(out).expanduser().absolute(),
            tensors=list(self.tensors),
            text_files={"config.json": self.config_text(), "README.md": mlx_model_card(plan, title, self.describe(plan))},
            copied_files=tokenizer_files(plan),
            overwrite=overwrite,
            manifest=manifest,
            shard_metadata=dict(SHARD_METADATA),
            index_always=True,
            index_metadata={"total_parameters": self.total_parameters(plan)},
        )

    def describe(self, plan: "SlicePlan") -> dict:
        src = plan.checkpoint.tensors
        dtypes = sorted({src[t.source].dtype for t in self.tensors})
        return {
            "name": "mlx",
            "bits": self.format.bits,
            "group_size": self.format.group,
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "tensors": len(self.tensors),
            "quantized": sum(1 for t in self.tensors if t.quant),
            "params": self.total_parameters(plan),
            "tensor_bytes": sum(t.nbytes(src[t.source].shape, src[t.source].dtype) for t in self.tensors),
            "kv_copied_from_producer": list(self.filled_kv),
            "note": TEXT_ONLY_NOTE,
        }

    def figures(self, plan: "SlicePlan") -> dict | None:
        """What the report says of the quantization before anything is written (None without)."""
        if self.format.bits is None:
            return None
        src = plan.checkpoint.tensors
        return {
            "scheme": "mlx_affine",
            "bits": self.format.bits,
            "group_size": self.format.group,
            "mode": MODE,
            "format": "mlx",
            "kept": [{"name": n, "reason": r} for n, r in self.kept],
            "output_bytes_unquantized": sum(
                math.prod(t.shape(src[t.source].shape)) * engine.DTYPE_SIZES[src[t.source].dtype] for t in self.tensors
            ),
            "weight_of": {t.name: t.quant.weight for t in self.tensors if t.quant},
        }

    def report(self, plan: "SlicePlan", figures: dict | None, result: engine.EngineReport) -> dict | None:
        return None if figures is None else quantization_report(figures, result)

