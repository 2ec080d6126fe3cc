"""Everything gslice knows about Gemma 3n, in one place.

Given a source ``config.json`` and tensor list, this module decides which output tensors a
slicing spec produces (source tensor + engine operation), validates the spec against the
architecture, rewrites the config, and counts parameters. The rules come from transformers'
Gemma 3n implementation and the published checkpoints (see DESIGN.md):

* decoder layers ``layers.{i}.*`` are dropped or renumbered; MLP ``gate/up_proj`` keep their
  leading rows and ``down_proj`` its leading columns (MatFormer nests the narrow FFN first);
* ``embed_tokens_per_layer`` keeps the column blocks, ``per_layer_model_projection`` the row
  blocks, of kept layers;
* with S = ``num_kv_shared_layers``, layers at index >= L - S reuse the keys/values of the last
  earlier layer of their attention type, so those producer layers cannot be skipped;
* audio Conformer blocks can be dropped and renumbered; their FFN width is fixed at
  4 x hidden size in transformers, so it cannot be narrowed;
* with quantization, the 2-D Linear weights listed under "quantization targets" below are
  written in compressed-tensors' pack-quantized format; every other Linear module is named in
  the config's ignore list.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import engine, quantization
from .engine import CheckpointInfo, TensorPlan
from .errors import SourceError, SpecError
from .quantization import QuantOptions
from .spec import SliceSpec

MULTIMODAL_TYPE = "gemma3n"
TEXT_TYPE = "gemma3n_text"
PREFIXES = {MULTIMODAL_TYPE: "model.language_model.", TEXT_TYPE: "model."}
TEXT_ONLY_ARCHITECTURE = "Gemma3nForCausalLM"

# FFN widths MatFormer was trained at; other widths load and run but are unmeasured.
TRAINED_FFN_WIDTHS = (8192, 16384)

VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.")
AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.")
AUDIO_BLOCK = re.compile(r"^model\.audio_tower\.conformer\.(\d+)\.(.+)$")

MLP_ROWS = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
MLP_COLS = "mlp.down_proj.weight"
PLE_TABLE = "embed_tokens_per_layer.weight"
PLE_PROJECTION = "per_layer_model_projection.weight"
EMBEDDINGS = ("embed_tokens.weight", PLE_TABLE)

# Tensors every decoder layer has. Layers that reuse another layer's KV cache may also store
# k_proj/v_proj/k_norm (the published checkpoints do; transformers >= 4.56 does not save them).
LAYER_TENSORS = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
    "post_per_layer_input_norm.weight",
    "self_attn.q_proj.weight",
    "self_attn.o_proj.weight",
    "self_attn.q_norm.weight",
    *MLP_ROWS,
    MLP_COLS,
    "per_layer_input_gate.weight",
    "per_layer_projection.weight",
    "laurel.linear_left.weight",
    "laurel.linear_right.weight",
    "laurel.post_laurel_norm.weight",
    "altup.correct_output_scale",
    "altup.correction_coefs.weight",
    "altup.modality_router.weight",
    "altup.prediction_coefs.weight",
    "altup.router_norm.weight",
)
KV_TENSORS = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")

# Files copied next to the weights: tokenizer, processor, chat template, generation config.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
FLOAT_DTYPES = ("BF16", "F16", "F32")


# -- the source architecture --------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """The facts about a Gemma 3n checkpoint that slicing depends on, read from config.json."""

    model_type: str
    num_layers: int
    num_kv_shared: int
    layer_types: tuple[str, ...]
    ffn_widths: tuple[int, ...]
    activation_sparsity: tuple[float, ...]
    hidden_size: int
    ple_dim: int
    audio_blocks: int | None
    audio_hidden: int | None
    has_vision: bool

    @property
    def prefix(self) -> str:
        return PREFIXES[self.model_type]

    @property
    def has_audio(self) -> bool:
        return self.audio_blocks is not None

    @property
    def first_shared(self) -> int:
        """Index of the first layer that reuses an earlier layer's keys and values."""
        return self.num_layers - self.num_kv_shared

    @property
    def producers(self) -> dict[str, int]:
        """attention type -> the layer whose K/V the sharing layers of that type reuse."""
        out: dict[str, int] = {}
        for i in range(self.first_shared):
            out[self.layer_types[i]] = i
        return out

    def sharing_layers(self, kind: str, among: Iterable[int]) -> list[int]:
        return [i for i in among if i >= self.first_shared and self.layer_types[i] == kind]


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise SourceError(f"{src} is not a Gemma 3n checkpoint: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path} is not a JSON object")
    return config


def text_config(config: dict) -> dict:
    """The decoder's config: ``text_config`` of a multimodal config, else the config itself."""
    return config["text_config"] if config.get("model_type") == MULTIMODAL_TYPE else config


def architecture(config: dict, where: str = "config.json") -> Architecture:
    model_type = config.get("model_type")
    if model_type not in PREFIXES:
        raise SourceError(
            f"{where}: model_type is {model_type!r}, not a Gemma 3n checkpoint "
            f"(expected {MULTIMODAL_TYPE!r} or {TEXT_TYPE!r})"
        )
    if model_type == MULTIMODAL_TYPE and not isinstance(config.get("text_config"), dict):
        raise SourceError(f"{where}: a {MULTIMODAL_TYPE!r} config needs a text_config object")
    text = text_config(config)
    L = _config_int(text, "num_hidden_layers", where)
    layer_types = tuple(text.get("layer_types") or _default_layer_types(L))
    widths = _per_layer(text.get("intermediate_size", 16384), L, "intermediate_size", where)
    sparsity = _per_layer(text.get("activation_sparsity_pattern"), L, "activation_sparsity_pattern", where)
    if len(layer_types) != L:
        raise SourceError(
            f"{where}: layer_types has {len(layer_types)} entries but num_hidden_layers is {L} "
            "(a config written by the published slicing notebook; layer_types must list the kept layers)"
        )
    audio = config.get("audio_config") if model_type == MULTIMODAL_TYPE else None
    arch = Architecture(
        model_type=model_type,
        num_layers=L,
        num_kv_shared=int(text.get("num_kv_shared_layers", 15)),
        layer_types=layer_types,
        ffn_widths=tuple(int(w) for w in widths),
        activation_sparsity=tuple(float(s) for s in sparsity),
        hidden_size=_config_int(text, "hidden_size", where),
        ple_dim=_config_int(text, "hidden_size_per_layer_input", where),
        audio_blocks=int(audio.get("conf_num_hidden_layers", 12)) if isinstance(audio, dict) else None,
        audio_hidden=int(audio.get("hidden_size", 1536)) if isinstance(audio, dict) else None,
        has_vision=model_type == MULTIMODAL_TYPE and isinstance(config.get("vision_config"), dict),
    )
    _check_sharing(arch, where)
    return arch


def _config_int(text: dict, key: str, where: str) -> int:
    value = text.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SourceError(f"{where}: text config field {key} is {value!r}, expected a positive integer")
    return value


def _default_layer_types(n: int) -> list[str]:
    # transformers' default when a config omits layer_types: every fifth layer is global.
    return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n)]


def _per_layer(value, n: int, key: str, where: str) -> list:
    if value is None:  # transformers' default sparsity: the first 10 layers (if more than 10)
        k = 10 if n > 10 else 0
        return [0.95] * k + [0.0] * (n - k)
    if isinstance(value, list):
        if len(value) != n:
            raise SourceError(f"{where}: {key} has {len(value)} entries but num_hidden_layers is {n}")
        return value
    return [value] * n


def _check_sharing(arch: Architecture, where: str) -> None:
    if not 0 <= arch.num_kv_shared < arch.num_layers:
        raise SourceError(
            f"{where}: num_kv_shared_layers is {arch.num_kv_shared}, outside 0..{arch.num_layers - 1}"
        )
    shared_types = {arch.layer_types[i] for i in range(arch.first_shared, arch.num_layers)}
    missing = sorted(shared_types - set(arch.producers))
    if missing:
        raise SourceError(
            f"{where}: no layer before the KV-sharing region produces keys/values for {', '.join(missing)}"
        )


# -- validating a spec --------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A spec checked against an architecture: which layers stay and at what width."""

    spec: SliceSpec
    kept: tuple[int, ...]
    widths: tuple[int, ...]
    audio_kept: tuple[int, ...] | None

    @property
    def new_index(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}


def resolve(arch: Architecture, spec: SliceSpec) -> Resolved:
    """Checks every rule; raises SpecError naming the first value that breaks one."""
    skip = _check_indices(spec.layers_to_skip, arch.num_layers, "layers_to_skip", "layers")
    kept = tuple(i for i in range(arch.num_layers) if i not in skip)
    if not kept:
        raise SpecError(f"layers_to_skip: all {arch.num_layers} layers are skipped; keep at least one")
    _check_kv_producers(arch, kept, skip)
    widths = _check_widths(arch, kept, spec.ffn_dims)
    return Resolved(spec, kept, widths, _check_audio(arch, spec))


def _check_indices(values: Sequence[int], n: int, what: str, noun: str) -> set[int]:
    seen: set[int] = set()
    for v in values:
        if not 0 <= v < n:
            raise SpecError(f"{what}: {v} is out of range: the source has {n} {noun} (0-{n - 1})")
        if v in seen:
            raise SpecError(f"{what}: {v} is listed twice")
        seen.add(v)
    return seen


def _check_kv_producers(arch: Architecture, kept: tuple[int, ...], skip: set[int]) -> None:
    kept_before = [i for i in kept if i < arch.first_shared]
    for kind, producer in sorted(arch.producers.items(), key=lambda kv: kv[1]):
        users = arch.sharing_layers(kind, kept)
        if not users or producer not in skip:
            continue
        region = f"layers {arch.first_shared}-{arch.num_layers - 1}"
        if not any(arch.layer_types[i] == kind for i in kept_before):
            raise SpecError(
                f"layers_to_skip: no {kind} layer before the KV-sharing region ({region}) is kept, "
                f"so the kept {kind} layers {_join(users)} would have no KV producer"
            )
        raise SpecError(
            f"layers_to_skip: layer {producer} is the KV producer of the {kind} layers {_join(users)} "
            f"({region} reuse earlier keys/values, num_kv_shared_layers={arch.num_kv_shared}); "
            "it cannot be skipped while they are kept"
        )


def _check_widths(arch: Architecture, kept: tuple[int, ...], ffn_dims) -> tuple[int, ...]:
    if ffn_dims is None:
        return tuple(arch.ffn_widths[i] for i in kept)
    if isinstance(ffn_dims, int):
        widths = [ffn_dims] * len(kept)
        label = lambda k: "ffn_dims"  # noqa: E731 - one value names itself
    else:
        if len(ffn_dims) != len(kept):
            raise SpecError(
                f"ffn_dims: {len(ffn_dims)} widths given for {len(kept)} kept layers "
                f"({arch.num_layers} source layers, {arch.num_layers - len(kept)} skipped)"
            )
        widths = list(ffn_dims)
        label = lambda k: f"ffn_dims[{k}]"  # noqa: E731
    for k, (layer, w) in enumerate(zip(kept, widths)):
        if w <= 0:
            raise SpecError(f"{label(k)} = {w} must be a positive integer")
        if w > arch.ffn_widths[layer]:
            raise SpecError(
                f"{label(k)} = {w} exceeds the source FFN width {arch.ffn_widths[layer]} of layer {layer}"
            )
    return tuple(widths)


def _check_audio(arch: Architecture, spec: SliceSpec) -> tuple[int, ...] | None:
    if spec.drop_audio and spec.audio_layers_to_skip:
        raise SpecError("audio_layers_to_skip: the audio tower is being dropped, so there is nothing to slice")
    if not arch.has_audio:
        if spec.audio_layers_to_skip:
            raise SpecError("audio_layers_to_skip: the source has no audio tower")
        return None
    n = arch.audio_blocks
    for v in spec.audio_layers_to_skip:
        if v >= n:
            raise SpecError(
                f"audio_layers_to_skip: {v} is out of range: the source's audio encoder has {n} "
                f"Conformer blocks (0-{n - 1}). Proposals assuming 16 blocks with a 4096-wide FFN "
                f"describe a different encoder: Gemma 3n's has {n} blocks with FFN width "
                f"{4 * (arch.audio_hidden or 1536)} (4 x hidden size)"
            )
    skip = _check_indices(spec.audio_layers_to_skip, n, "audio_layers_to_skip", "audio Conformer blocks")
    kept = tuple(i for i in range(n) if i not in skip)
    if not kept:
        raise SpecError(f"audio_layers_to_skip: all {n} audio blocks are skipped; use --drop-audio instead")
    return kept


def audio_ffn_refusal(width: int) -> SpecError:
    """Why a narrower audio FFN is refused: transformers has no config field for its width."""
    return SpecError(
        f"audio FFN width {width}: not expressible: transformers builds every Conformer FFN as "
        "4 x hidden_size (6144 in Gemma 3n's 1536-wide encoder) with no config field for it, "
        "so a narrower one loads nowhere"
    )


def _join(xs: Sequence[int]) -> str:
    return ", ".join(map(str, xs))


# -- checking the source tensors ----------------------------------------------------------


def check_source(arch: Architecture, ck: CheckpointInfo, res: Resolved) -> None:
    """Every tensor the rules read must exist with the shape and dtype the config implies."""
    p, L, P, H = arch.prefix, arch.num_layers, arch.ple_dim, arch.hidden_size
    _expect(ck, p + PLE_TABLE, (None, L * P))
    _expect(ck, p + PLE_PROJECTION, (L * P, H))
    for i in res.kept:
        base = f"{p}layers.{i}."
        for suffix in LAYER_TENSORS:
            _expect(ck, base + suffix, None)
        if i < arch.first_shared:
            for suffix in KV_TENSORS:
                _expect(ck, base + suffix, None)
        F = arch.ffn_widths[i]
        for suffix in MLP_ROWS:
            _expect(ck, base + suffix, (F, H))
        _expect(ck, base + MLP_COLS, (H, F))
    if res.audio_kept is not None and res.spec.audio_layers_to_skip:
        found = {int(m.group(1)) for n in ck.tensors if (m := AUDIO_BLOCK.match(n))}
        if found != set(range(arch.audio_blocks)):
            raise SourceError(
                f"the checkpoint holds audio Conformer blocks {_join(sorted(found))} but config.json "
                f"says conf_num_hidden_layers={arch.audio_blocks}"
            )


def _expect(ck: CheckpointInfo, name: str, shape: tuple[int | None, ...] | None) -> None:
    t = ck.tensors.get(name)
    if t is None:
        raise SourceError(f"missing tensor {name}: the slicing rules need it")
    if t.dtype not in FLOAT_DTYPES:
        raise SourceError(
            f"tensor {name} has dtype {t.dtype}; Gemma 3n weights are floating point ({', '.join(FLOAT_DTYPES)})"
        )
    if shape is not None and (
        len(t.shape) != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape))
    ):
        want = "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"
        raise SourceError(f"tensor {name} has shape {list(t.shape)}, but config.json implies {want}")


# -- the plan -----------------------------------------------------------------------------

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def plan_tensors(arch: Architecture, ck: CheckpointInfo, res: Resolved) -> list[TensorPlan]:
    """The output tensors, each a source tensor and an engine operation, in natural order."""
    out = [tp for name in ck.tensors if (tp := _map_tensor(name, arch, res)) is not None]
    out.sort(key=lambda t: _natural_key(t.name))
    return out


def _map_tensor(name: str, arch: Architecture, res: Resolved) -> TensorPlan | None:
    spec = res.spec
    if spec.drop_vision and name.startswith(VISION_PREFIXES):
        return None
    if spec.drop_audio and name.startswith(AUDIO_PREFIXES):
        return None
    if (m := AUDIO_BLOCK.match(name)) and res.audio_kept is not None:
        block = int(m.group(1))
        if block not in res.audio_kept:
            return None
        return TensorPlan(f"model.audio_tower.conformer.{res.audio_kept.index(block)}.{m.group(2)}", name)
    if not name.startswith(arch.prefix):
        return TensorPlan(name, name)
    rest = name[len(arch.prefix) :]
    out_prefix = PREFIXES[TEXT_TYPE] if spec.text_only else arch.prefix
    if m := _LAYER.match(rest):
        layer, suffix = int(m.group(1)), m.group(2)
        if layer not in res.new_index:
            return None
        new = res.new_index[layer]
        return TensorPlan(f"{out_prefix}layers.{new}.{suffix}", name, _mlp_op(suffix, arch.ffn_widths[layer], res.widths[new]))
    if rest == PLE_TABLE:
        return TensorPlan(out_prefix + rest, name, _ple_op(engine.keep_col_blocks, arch, res))
    if rest == PLE_PROJECTION:
        return TensorPlan(out_prefix + rest, name, _ple_op(engine.keep_row_blocks, arch, res))
    return TensorPlan(out_prefix + rest, name)


def _mlp_op(suffix: str, source_width: int, width: int) -> engine.Op:
    if width == source_width:
        return engine.copy()
    if suffix in MLP_ROWS:
        return engine.keep_rows(width)
    if suffix == MLP_COLS:
        return engine.keep_cols(width)
    return engine.copy()


def _ple_op(blocks, arch: Architecture, res: Resolved) -> engine.Op:
    if len(res.kept) == arch.num_layers:
        return engine.copy()
    return blocks(arch.ple_dim, res.kept)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# -- quantization targets -----------------------------------------------------------------

# The Linear weights --quant quantizes, relative to the decoder prefix. Per layer: attention,
# MLP, LAuReL's low-rank pair, and the per-layer-input gate and projection.
QUANT_LAYER_WEIGHTS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    MLP_COLS,
    "laurel.linear_left.weight",
    "laurel.linear_right.weight",
    "per_layer_input_gate.weight",
    "per_layer_projection.weight",
)
# Model-level: the PLE projection and AltUp's stream projections.
QUANT_TEXT_WEIGHTS = re.compile(r"^(per_layer_model_projection|altup_projections\.\d+|altup_unembed_projections\.\d+)\.weight$")
# AltUp's modality_router [4, H], prediction_coefs [16, 4] and correction_coefs [4, 4] stay in
# the source dtype: under 0.6 MB together in E4B, and they weight the four AltUp streams
# directly, so quantization error there would shift every residual stream for no real saving.
# The coefficient matrices are also narrower than any group.
#
# Embeddings are nn.Embedding modules, not Linear; with --quant-embeddings the PLE table
# (4.7 GB of E4B's 15.7) is quantized, targeted by name. embed_tokens stays: lm_head is tied
# to it. transformers 5.23 loads a quantized embedding only with
# CompressedTensorsConfig(dequantize=True); its default path fails in _init_weights
# ("'Gemma3nTextScaledWordEmbedding' object has no attribute 'weight'").
QUANT_EMBEDDINGS = (PLE_TABLE,)
# The tower embedders' lookup tables are never quantized; their projections are Linear.
TOWER_EMBEDDING_TABLES = ("model.embed_audio.embedding.weight", "model.embed_vision.embedding.weight")
AUDIO_TOWER = "model.audio_tower."
# Not stored (tied to embed_tokens) but a Linear module transformers would otherwise target.
TIED_HEAD = "lm_head"


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


def plan_quantization(arch: Architecture, ck: CheckpointInfo, res: Resolved, tensors: Sequence[TensorPlan], opts: QuantOptions) -> QuantPlan:
    """Marks the quantization targets among ``tensors``. A target whose width (columns) is not
    a multiple of the group size stays in the source dtype (e.g. laurel.linear_right, whose
    width is laurel_rank = 64 in E4B, with groups of 128), except the FFN width, which the spec
    chooses: then SpecError."""
    prefix = output_prefix(arch, res.spec)
    g = opts.group_size
    out, ignore, extra, kept = [], [TIED_HEAD], [], []
    for tp in tensors:
        shape = engine.output_shape(ck.tensors[tp.source].shape, tp.op)
        role = _quant_role(tp.name, shape, prefix, opts)
        if role in ("target", "embedding"):
            if shape[-1] % g == 0:
                out.append(quantization.quantized(tp, opts))
                if role == "embedding":
                    extra.append(quantization.module_of(tp.name))
                continue
            if tp.name.endswith(MLP_COLS):
                layer = _LAYER.match(tp.name[len(prefix):]).group(1)
                raise SpecError(
                    f"group_size {g}: the FFN width {shape[-1]} of output layer {layer} is not a multiple of it "
                    f"(mlp.down_proj is quantized in groups of {g} along that width); use FFN widths that are "
                    f"multiples of {g} or a smaller group size"
                )
            kept.append((tp.name, f"width {shape[-1]} is not a multiple of the group size {g}"))
        out.append(tp)
        if role in ("target", "linear"):
            ignore.append(quantization.module_of(tp.name))
    return QuantPlan(tuple(out), tuple(ignore), tuple(extra), tuple(kept))


def _quant_role(name: str, shape: Sequence[int], prefix: str, opts: QuantOptions) -> str | None:
    """Returns "target" or "embedding" (to quantize), "linear" (a Linear module to leave
    alone), or None (not a Linear weight: norms, convolutions, scalars, embedding tables)."""
    if len(shape) != 2 or not name.endswith(".weight") or name in TOWER_EMBEDDING_TABLES:
        return None
    if name.startswith(prefix):
        rest = name[len(prefix):]
        if rest in EMBEDDINGS:
            return "embedding" if opts.embeddings and rest in QUANT_EMBEDDINGS else None
        m = _LAYER.match(rest)
        if (m and m.group(2) in QUANT_LAYER_WEIGHTS) or QUANT_TEXT_WEIGHTS.match(rest):
            return "target"
        return "linear"
    if name.startswith(AUDIO_TOWER):
        return "target" if opts.audio else "linear"
    # embed_audio / embed_vision projections, and any 2-D weight of the vision tower.
    return "linear"


# -- the new config -----------------------------------------------------------------------


def rewrite_config(config: dict, arch: Architecture, res: Resolved) -> dict:
    """The output config.json: the source's, with only the fields slicing changes edited."""
    out = copy.deepcopy(config)
    text = text_config(out)
    kept = res.kept
    text["num_hidden_layers"] = len(kept)
    text["intermediate_size"] = list(res.widths)
    text["layer_types"] = [arch.layer_types[i] for i in kept]
    text["activation_sparsity_pattern"] = [arch.activation_sparsity[i] for i in kept]
    text["num_kv_shared_layers"] = sum(1 for i in kept if i >= arch.first_shared)
    if res.audio_kept is not None and res.spec.audio_layers_to_skip:
        out["audio_config"]["conf_num_hidden_layers"] = len(res.audio_kept)
    if res.spec.text_only and arch.model_type == MULTIMODAL_TYPE:
        return _as_text_model_config(out, text)
    return out


def _as_text_model_config(full: dict, text: dict) -> dict:
    # Gemma3nForCausalLM reads a bare text config (model_type gemma3n_text).
    out = dict(text)
    out["architectures"] = [TEXT_ONLY_ARCHITECTURE]
    for key in ("torch_dtype", "dtype", "transformers_version"):
        if key in full and key not in out:
            out[key] = full[key]
    return out


def files_to_copy(src: Path, spec: SliceSpec) -> dict[str, Path]:
    names = TOKENIZER_FILES if spec.text_only else TOKENIZER_FILES + PROCESSOR_FILES
    return {n: src / n for n in names if (src / n).is_file()}


# -- counting parameters ------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts from shapes. ``effective`` is what Google's table reports: the text
    decoder without ``embed_tokens`` and ``embed_tokens_per_layer``."""

    effective: int
    text: int
    audio: int
    vision: int
    total: int


def count_params(shapes: Mapping[str, Sequence[int]], prefix: str) -> ParamCounts:
    text = audio = vision = total = embeddings = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        total += n
        if name.startswith(prefix):
            text += n
            if name[len(prefix) :] in EMBEDDINGS:
                embeddings += n
        elif name.startswith(AUDIO_PREFIXES):
            audio += n
        elif name.startswith(VISION_PREFIXES):
            vision += n
    return ParamCounts(text - embeddings, text, audio, vision, total)


def output_prefix(arch: Architecture, spec: SliceSpec) -> str:
    return PREFIXES[TEXT_TYPE] if spec.text_only else arch.prefix


def is_trained_width(width: int) -> bool:
    return width in TRAINED_FFN_WIDTHS
