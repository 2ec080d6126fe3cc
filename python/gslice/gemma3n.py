"""Everything gslice knows about Gemma 3n, in one place.

Given a source ``config.json`` and tensor list, this module decides which output tensors a
slicing spec produces (source tensor + engine operation), validates the spec against the
architecture, rewrites the config, and counts parameters. The rules come from transformers'
Gemma 3n implementation and the published checkpoints (docs/design.md, "Gemma 3n facts"):

* decoder layers ``layers.{i}.*`` are dropped or renumbered; MLP ``gate/up_proj`` keep their
  leading rows and ``down_proj`` its leading columns (MatFormer nests the narrow FFN first);
* ``embed_tokens_per_layer`` keeps the column blocks, ``per_layer_model_projection`` the row
  blocks, of kept layers;
* with S = ``num_kv_shared_layers``, layers at index >= L - S reuse the keys/values of the last
  earlier layer of their attention type, so those producer layers cannot be skipped;
* audio Conformer blocks can be dropped and renumbered; their FFN width is fixed at
  4 x hidden size in transformers, so it cannot be narrowed;
* every output tensor gets a role (:func:`tensor_role`): what it is, which kind of module it
  belongs to and whether it is a weight-only quantization target; the output formats
  (:mod:`gslice.formats`) map roles to their own names and types.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from types import MappingProxyType
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import engine
from .engine import CheckpointInfo
from .errors import InternalError, SourceError, SpecError
from .formats.base import Role, SlicedTensor
from .jsonfile import read_json
from .spec import SliceSpec
from .units import fmt_ranges

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
# What slicing reads from a Hub repo: the weights, their index, the config and the files copied
# beside the weights. Top-level files only (HUB_IGNORE): copies in sub-folders are not needed.
HUB_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "config.json", *TOKENIZER_FILES, *PROCESSOR_FILES)
HUB_IGNORE = ("*/*",)
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
    # Fixed sizes and switches some runtimes hard-code (see runtimes.py); transformers' defaults.
    laurel_rank: int = 64
    altup_num_inputs: int = 4
    altup_active_idx: int = 0
    altup_correct_scale: bool = True
    final_logit_softcapping: float | None = 30.0

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
    if not path.exists():
        raise SourceError(f"{src} is not a Gemma 3n checkpoint: it has no config.json")
    config = read_json(path, "config")
    if not isinstance(config, dict):
        raise SourceError(f"config {path} holds {type(config).__name__}, not a JSON object")
    return config


def text_config(config: dict) -> dict:
    """The decoder's config: ``text_config`` of a multimodal config, else the config itself."""
    return config["text_config"] if config.get("model_type") == MULTIMODAL_TYPE else config


# Bounds on config values: far beyond any real model, small enough that nothing computed from
# them (layer lists, shapes) can exhaust memory before the tensors are compared with them.
MAX_LAYERS = 1024
MAX_DIM = 2**31 - 1
LAYER_TYPES = ("sliding_attention", "full_attention")


def architecture(config: dict, where: str = "config.json") -> Architecture:
    """The facts slicing depends on, with every config field gslice reads anywhere (shapes, KV
    cache, towers) checked here: a wrong type or value is refused now, naming the field."""
    model_type = config.get("model_type")
    if model_type not in PREFIXES:
        raise SourceError(
            f"{where}: model_type is {model_type!r}, not a Gemma 3n checkpoint "
            f"(expected {MULTIMODAL_TYPE!r} or {TEXT_TYPE!r})"
        )
    if model_type == MULTIMODAL_TYPE and not isinstance(config.get("text_config"), dict):
        raise SourceError(f"{where}: a {MULTIMODAL_TYPE!r} config needs a text_config object")
    text = text_config(config)
    L = _config_int(text, "num_hidden_layers", where, high=MAX_LAYERS)
    layer_types = _layer_types(text.get("layer_types"), L, where)
    widths = _per_layer(text.get("intermediate_size", 16384), L, "intermediate_size", where, _width)
    sparsity = _per_layer(text.get("activation_sparsity_pattern"), L, "activation_sparsity_pattern", where, _fraction)
    if len(layer_types) != L:
        raise SourceError(
            f"{where}: layer_types has {len(layer_types)} entries but num_hidden_layers is {L} "
            "(a config written by the published slicing notebook; layer_types must list the kept layers)"
        )
    audio = config.get("audio_config") if model_type == MULTIMODAL_TYPE else None
    if audio is not None and not isinstance(audio, dict):
        raise SourceError(f"{where}: audio_config is {audio!r}, expected an object")
    vision = config.get("vision_config") if model_type == MULTIMODAL_TYPE else None
    if vision is not None and not isinstance(vision, dict):
        raise SourceError(f"{where}: vision_config is {vision!r}, expected an object")
    arch = Architecture(
        model_type=model_type,
        num_layers=L,
        num_kv_shared=_config_int(text, "num_kv_shared_layers", where, default=15, low=0),
        layer_types=layer_types,
        ffn_widths=tuple(widths),
        activation_sparsity=tuple(sparsity),
        hidden_size=_config_int(text, "hidden_size", where),
        ple_dim=_config_int(text, "hidden_size_per_layer_input", where),
        audio_blocks=_config_int(audio, "conf_num_hidden_layers", where, default=12, high=MAX_LAYERS, section="audio_config")
        if audio is not None else None,
        audio_hidden=_config_int(audio, "hidden_size", where, default=1536, section="audio_config") if audio is not None else None,
        has_vision=vision is not None,
        laurel_rank=_config_int(text, "laurel_rank", where, default=64),
        altup_num_inputs=_config_int(text, "altup_num_inputs", where, default=4),
        altup_active_idx=_config_int(text, "altup_active_idx", where, default=0, low=0),
        altup_correct_scale=bool(text.get("altup_correct_scale", True)),
        final_logit_softcapping=text.get("final_logit_softcapping", 30.0),
    )
    _check_sharing(arch, where)
    _Dims.read(config, arch, where)  # every other field a shape or a size depends on
    return arch


def _config_int(fields: dict, key: str, where: str, *, default=None, low: int = 1, high: int = MAX_DIM,
                section: str = "text config") -> int:
    """An integer field (bool, float and string refused) within [low, high]; ``default`` when
    the key is absent (a null that is present is refused)."""
    value = fields[key] if key in fields else default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        if high < MAX_DIM:
            want = f"an integer from {low} to {high}"
        else:
            want = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise SourceError(f"{where}: {section} field {key} is {value!r}, expected {want}")
    return value


def _default_layer_types(n: int) -> list[str]:
    # transformers' default when a config omits layer_types: every fifth layer is global.
    return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n)]


def _layer_types(value, n: int, where: str) -> tuple[str, ...]:
    if value is None:
        return tuple(_default_layer_types(n))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SourceError(f"{where}: text config field layer_types is {_short(value)}, expected a list of layer type names")
    for i, v in enumerate(value):
        if v not in LAYER_TYPES:
            raise SourceError(f"{where}: layer_types[{i}] is {v!r}; Gemma 3n layers are {' or '.join(LAYER_TYPES)}")
    return tuple(value)


def _per_layer(value, n: int, key: str, where: str, check) -> list:
    """One value per layer from a list of n, or one value for all; ``check(v, label, where)``."""
    if value is None and key == "activation_sparsity_pattern":
        # transformers' default sparsity: the first 10 layers (if more than 10)
        k = 10 if n > 10 else 0
        return [0.95] * k + [0.0] * (n - k)
    if isinstance(value, list):
        if len(value) != n:
            raise SourceError(f"{where}: {key} has {len(value)} entries but num_hidden_layers is {n}")
        return [check(v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    return [check(value, key, where)] * n


def _width(value, label: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIM:
        raise SourceError(f"{where}: {label} is {value!r}, expected a positive integer FFN width")
    return value


def _fraction(value, label: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SourceError(f"{where}: {label} is {value!r}, expected a number from 0 up to (not including) 1")
    return float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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

    @functools.cached_property  # asked once per tensor while planning
    def new_index(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}


def resolve(arch: Architecture, spec: SliceSpec) -> Resolved:
    """Checks every rule; raises SpecError naming the first value that breaks one."""
    problems = spec_problems(arch, spec)
    if problems:
        raise SpecError(problems[0])
    skip = set(spec.layers_to_skip)
    kept = tuple(i for i in range(arch.num_layers) if i not in skip)
    widths = _resolved_widths(kept, spec.ffn_dims, arch)
    return Resolved(spec, kept, widths, _audio_kept(arch, spec))


def spec_problems(arch: Architecture, spec: SliceSpec) -> list[str]:
    """Every rule the spec breaks, one message per rule (its first offending value), in the
    order :func:`resolve` checks them. Empty when the spec is valid."""
    problems: list[str] = []
    skip, index_problem = _index_problem(spec.layers_to_skip, arch.num_layers, "layers_to_skip", "layers")
    if index_problem:
        problems.append(index_problem)
    kept = tuple(i for i in range(arch.num_layers) if i not in skip)
    if not kept:
        problems.append(f"layers_to_skip: all {arch.num_layers} layers are skipped; keep at least one")
    else:
        problems += _kv_producer_problems(arch, kept, skip)
        problems += _width_problems(arch, kept, spec.ffn_dims)
    problems += _audio_problems(arch, spec)
    return problems


def _index_problem(values: Sequence[int], n: int, what: str, noun: str) -> tuple[set[int], str | None]:
    """The in-range distinct indices, and the first out-of-range or repeated one."""
    seen: set[int] = set()
    problem = None
    for v in values:
        if not 0 <= v < n:
            problem = problem or f"{what}: {v} is out of range: the source has {n} {noun} (0-{n - 1})"
        elif v in seen:
            problem = problem or f"{what}: {v} is listed twice"
        else:
            seen.add(v)
    return seen, problem


def _kv_producer_problems(arch: Architecture, kept: tuple[int, ...], skip: set[int]) -> list[str]:
    problems = []
    kept_before = [i for i in kept if i < arch.first_shared]
    region = f"layers {arch.first_shared}-{arch.num_layers - 1}"
    for kind, producer in sorted(arch.producers.items(), key=lambda kv: kv[1]):
        users = arch.sharing_layers(kind, kept)
        if not users or producer not in skip:
            continue
        if not any(arch.layer_types[i] == kind for i in kept_before):
            problems.append(
                f"layers_to_skip: no {kind} layer before the KV-sharing region ({region}) is kept, "
                f"so the kept {kind} layers {_join(users)} would have no KV producer"
            )
        else:
            problems.append(
                f"layers_to_skip: layer {producer} is the KV producer of the {kind} layers {_join(users)} "
                f"({region} reuse earlier keys/values, num_kv_shared_layers={arch.num_kv_shared}); "
                "it cannot be skipped while they are kept"
            )
    return problems


def _width_problems(arch: Architecture, kept: tuple[int, ...], ffn_dims) -> list[str]:
    if ffn_dims is None:
        return []
    if not isinstance(ffn_dims, int) and len(ffn_dims) != len(kept):
        return [
            f"ffn_dims: {len(ffn_dims)} widths given for {len(kept)} kept layers "
            f"({arch.num_layers} source layers, {arch.num_layers - len(kept)} skipped)"
        ]
    widths = _resolved_widths(kept, ffn_dims, arch)
    label = (lambda k: "ffn_dims") if isinstance(ffn_dims, int) else (lambda k: f"ffn_dims[{k}]")
    for k, (layer, w) in enumerate(zip(kept, widths)):
        if w <= 0:
            return [f"{label(k)} = {w} must be a positive integer"]
        if w > arch.ffn_widths[layer]:
            return [f"{label(k)} = {w} exceeds the source FFN width {arch.ffn_widths[layer]} of layer {layer}"]
    return []


def _resolved_widths(kept: tuple[int, ...], ffn_dims, arch: Architecture) -> tuple[int, ...]:
    if ffn_dims is None:
        return tuple(arch.ffn_widths[i] for i in kept)
    if isinstance(ffn_dims, int):
        return (ffn_dims,) * len(kept)
    return tuple(ffn_dims)


def _audio_problems(arch: Architecture, spec: SliceSpec) -> list[str]:
    if spec.drop_audio and spec.audio_layers_to_skip:
        return ["audio_layers_to_skip: the audio tower is being dropped, so there is nothing to slice"]
    if not arch.has_audio:
        return ["audio_layers_to_skip: the source has no audio tower"] if spec.audio_layers_to_skip else []
    n = arch.audio_blocks
    for v in spec.audio_layers_to_skip:
        if v >= n:
            return [
                f"audio_layers_to_skip: {v} is out of range: the source's audio encoder has {n} "
                f"Conformer blocks (0-{n - 1}). Proposals assuming 16 blocks with a 4096-wide FFN "
                f"describe a different encoder: Gemma 3n's has {n} blocks with FFN width "
                f"{4 * (arch.audio_hidden or 1536)} (4 x hidden size)"
            ]
    skip, problem = _index_problem(spec.audio_layers_to_skip, n, "audio_layers_to_skip", "audio Conformer blocks")
    if problem:
        return [problem]
    if len(skip) == n:
        return [f"audio_layers_to_skip: all {n} audio blocks are skipped; use --drop-audio instead"]
    return []


def sliced(arch: Architecture, res: Resolved) -> Architecture:
    """The architecture of a slice's output, in its own layer indices: the kept layers' types,
    widths and sparsity, in order; the KV-sharing layers among them (their producers are kept,
    :func:`resolve` checked that); the towers it keeps."""
    kept = res.kept
    text_only = res.spec.text_only and arch.model_type == MULTIMODAL_TYPE
    return replace(
        arch,
        model_type=TEXT_TYPE if text_only else arch.model_type,
        num_layers=len(kept),
        num_kv_shared=sum(1 for i in kept if i >= arch.first_shared),
        layer_types=tuple(arch.layer_types[i] for i in kept),
        ffn_widths=res.widths,
        activation_sparsity=tuple(arch.activation_sparsity[i] for i in kept),
        audio_blocks=None if res.spec.drop_audio or res.audio_kept is None else len(res.audio_kept),
        audio_hidden=None if res.spec.drop_audio else arch.audio_hidden,
        has_vision=arch.has_vision and not res.spec.drop_vision,
    )


def _audio_kept(arch: Architecture, spec: SliceSpec) -> tuple[int, ...] | None:
    if not arch.has_audio:
        return None
    skip = set(spec.audio_layers_to_skip)
    return tuple(i for i in range(arch.audio_blocks) if i not in skip)


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


def check_source(config: dict, arch: Architecture, ck: CheckpointInfo, res: Resolved) -> None:
    """The source against its config.json, tensor by tensor, before anything is written: one
    floating-point dtype for the whole checkpoint; no more decoder layers or audio blocks than
    the config says; no tensor the config does not describe; every tensor with the shape the
    config implies; every tensor the output will hold present. Skipped layers and dropped
    towers may lack tensors (nothing reads them), and so may the k/v projections of KV-sharing
    layers (transformers >= 4.56 does not save them). The vision tower's own tensors are
    compared only when the config names the published tower: no config field describes it."""
    expected, tower = _expected_shapes(config, arch)
    # An undescribed vision tower is kept as it is, integer buffers (BatchNorm counters) included.
    free = (lambda n: n.startswith(VISION_TOWER_PREFIX)) if tower is None and arch.has_vision else (lambda n: False)
    _check_dtypes(ck, free)
    _check_counts(arch, ck)
    unknown = [n for n in ck.tensors if n not in expected and not free(n)]
    if unknown:
        raise SourceError(f"the source holds {_tensors(unknown)} that config.json does not describe")
    wrong = [n for n, t in ck.tensors.items() if n in expected and tuple(t.shape) != expected[n]]
    if wrong:
        n = sorted(wrong, key=_natural_key)[0]
        more = f" ({len(wrong) - 1} more tensors differ from it too)" if len(wrong) > 1 else ""
        raise SourceError(f"tensor {n} has shape {list(ck.tensors[n].shape)}, but config.json implies {list(expected[n])}{more}")
    missing = [n for n in expected if n not in ck.tensors and not _optional(n, arch) and _map_tensor(n, len(expected[n]), arch, res) is not None]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise SourceError(f"missing {_tensors(missing)}: config.json implies {them} and the output holds {them}")


def _check_dtypes(ck: CheckpointInfo, free) -> None:
    """Weights are floating point, all of one dtype; ``free(name)`` tensors may be integers."""
    floats = {}
    for name, t in ck.tensors.items():
        if t.dtype in FLOAT_DTYPES:
            floats[name] = t.dtype
        elif not free(name):
            raise SourceError(
                f"tensor {name} has dtype {t.dtype}; Gemma 3n weights are floating point ({', '.join(FLOAT_DTYPES)})"
            )
    counts = Counter(floats.values())
    if len(counts) > 1:
        common, n = counts.most_common(1)[0]
        odd = sorted((name for name, d in floats.items() if d != common), key=_natural_key)
        raise SourceError(
            f"{_tensors(odd)} {'is' if len(odd) == 1 else 'are'} {floats[odd[0]]} but the other {n} "
            f"tensors are {common}: a checkpoint holds one dtype, and its config one torch_dtype"
        )


def _check_counts(arch: Architecture, ck: CheckpointInfo) -> None:
    layers = {int(m.group(1)) for n in ck.tensors if n.startswith(arch.prefix) and (m := _LAYER.match(n[len(arch.prefix):]))}
    if layers and max(layers) >= arch.num_layers:
        raise SourceError(
            f"the checkpoint holds decoder layers {fmt_ranges(layers, ', ')} but config.json says num_hidden_layers={arch.num_layers}"
        )
    blocks = {int(m.group(1)) for n in ck.tensors if (m := AUDIO_BLOCK.match(n))}
    if blocks and arch.has_audio and max(blocks) >= arch.audio_blocks:
        raise SourceError(
            f"the checkpoint holds audio Conformer blocks {fmt_ranges(blocks, ', ')} but config.json says "
            f"conf_num_hidden_layers={arch.audio_blocks}"
        )


def _expected_shapes(config: dict, arch: Architecture) -> tuple[dict[str, tuple[int, ...]], dict | None]:
    """(name -> shape for every tensor the config describes, the vision tower's part or None)."""
    dims = _Dims.read(config, arch, "config.json")
    shapes = _described_shapes(arch, dims)
    tower = _vision_tower_shapes() if _published_tower(dims) else None
    return {**shapes, **(tower or {})}, tower


def _published_tower(dims: "_Dims") -> bool:
    """Whether the config names the published MobileNet-V5 tower (whose output width is the
    vision hidden size, 2048): only then are its tensors' shapes known."""
    reference = e4b_config()["vision_config"]["hidden_size"]
    return dims.vision is not None and dims.vision_architecture == VISION_TOWER_ARCHITECTURE and dims.vision["V"] == reference


def _optional(name: str, arch: Architecture) -> bool:
    """k/v projections and k_norm of a KV-sharing layer: transformers never reads them."""
    if not name.startswith(arch.prefix):
        return False
    m = _LAYER.match(name[len(arch.prefix):])
    return bool(m) and m.group(2) in KV_TENSORS and int(m.group(1)) >= arch.first_shared


def _tensors(names: Sequence[str]) -> str:
    """'tensor a' or 'tensors a, b, c and 4 more', in natural order."""
    names = sorted(names, key=_natural_key)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"tensor{'s' if len(names) > 1 else ''} {shown}"


# -- the plan -----------------------------------------------------------------------------

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_NUMBERED = re.compile(r"^(altup_projections|altup_unembed_projections)\.(\d+)\.weight$")


def plan_tensors(arch: Architecture, ck: CheckpointInfo, res: Resolved) -> list[SlicedTensor]:
    """The output tensors, each a source tensor, an engine operation and a role, in natural order."""
    out = [t for name in ck.tensors if (t := _map_tensor(name, len(ck.tensors[name].shape), arch, res)) is not None]
    out.sort(key=lambda t: _natural_key(t.name))
    return out


def _map_tensor(name: str, rank: int, arch: Architecture, res: Resolved) -> SlicedTensor | None:
    spec = res.spec
    if spec.drop_vision and name.startswith(VISION_PREFIXES):
        return None
    if spec.drop_audio and name.startswith(AUDIO_PREFIXES):
        return None
    if (m := AUDIO_BLOCK.match(name)) and res.audio_kept is not None:
        block = int(m.group(1))
        if block not in res.audio_kept:
            return None
        new = f"model.audio_tower.conformer.{res.audio_kept.index(block)}.{m.group(2)}"
        return SlicedTensor(new, name, engine.copy(), tensor_role(new, rank, arch.prefix))
    if not name.startswith(arch.prefix):
        return SlicedTensor(name, name, engine.copy(), tensor_role(name, rank, arch.prefix))
    rest = name[len(arch.prefix) :]
    out_prefix = output_prefix(arch, spec)
    if m := _LAYER.match(rest):
        layer, suffix = int(m.group(1)), m.group(2)
        if layer not in res.new_index:
            return None
        new = res.new_index[layer]
        out = f"{out_prefix}layers.{new}.{suffix}"
        return SlicedTensor(out, name, _mlp_op(suffix, arch.ffn_widths[layer], res.widths[new]), tensor_role(out, rank, out_prefix))
    op = engine.copy()
    if rest == PLE_TABLE:
        op = _ple_op(engine.keep_col_blocks, arch, res)
    elif rest == PLE_PROJECTION:
        op = _ple_op(engine.keep_row_blocks, arch, res)
    return SlicedTensor(out_prefix + rest, name, op, tensor_role(out_prefix + rest, rank, out_prefix))


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


# -- roles: what each tensor is, for the formats ------------------------------------------

# The Linear weights every quantizing format targets, relative to the decoder prefix. Per
# layer: attention, MLP, LAuReL's low-rank pair, and the per-layer-input gate and projection.
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
QUANT_TEXT_WEIGHTS = (PLE_PROJECTION, "altup_projections.weight", "altup_unembed_projections.weight")
# AltUp's modality_router [4, H], prediction_coefs [16, 4] and correction_coefs [4, 4] stay in
# the source dtype: under 0.6 MB together in E4B, and they weight the four AltUp streams
# directly, so quantization error there would shift every residual stream for no real saving.
# The coefficient matrices are also narrower than any group.
#
# Embeddings are nn.Embedding modules, not Linear; on request the PLE table (4.7 GB of E4B's
# 15.7) is quantized ("embeddings" target). embed_tokens never is: lm_head is tied to it.
# transformers 5.23 loads a quantized embedding only with CompressedTensorsConfig(dequantize=True);
# its default path fails in _init_weights ("'Gemma3nTextScaledWordEmbedding' object has no
# attribute 'weight'").
# The tower embedders' lookup tables are never quantized; their projections are Linear.
TOWER_EMBEDDING_TABLES = ("model.embed_audio.embedding.weight", "model.embed_vision.embedding.weight")
AUDIO_TOWER = "model.audio_tower."


def tensor_role(name: str, rank: int, prefix: str) -> Role:
    """The role of an output tensor, from its name (``prefix`` is the output's decoder prefix)
    and rank: a 2-D ``.weight`` is a Linear or Embedding module's weight."""
    weight = rank == 2 and name.endswith(".weight")
    if not name.startswith(prefix):
        part = "audio" if name.startswith(AUDIO_PREFIXES) else "vision"
        if name in TOWER_EMBEDDING_TABLES:
            return Role(part, name, module="embedding")
        audio_linear = weight and name.startswith(AUDIO_TOWER)
        return Role(part, name, module="linear" if weight else None, target="audio" if audio_linear else None)
    rest = name[len(prefix) :]
    if m := _LAYER.match(rest):
        layer, kind = int(m.group(1)), m.group(2)
        target = "decoder" if kind in QUANT_LAYER_WEIGHTS else None
        return Role("text", kind, layer=layer, module="linear" if weight else None, target=target)
    if m := _NUMBERED.match(rest):
        return Role("text", f"{m.group(1)}.weight", index=int(m.group(2)), module="linear", target="decoder")
    if rest in EMBEDDINGS:
        return Role("text", rest, module="embedding", target="embeddings" if rest == PLE_TABLE else None)
    target = "decoder" if rest in QUANT_TEXT_WEIGHTS else None
    return Role("text", rest, module="linear" if weight else None, target=target)


def is_spec_width(role: Role) -> bool:
    """Whether the last dimension of a tensor of this role is the FFN width the spec chooses."""
    return role.part == "text" and role.kind == MLP_COLS


# -- the new config -----------------------------------------------------------------------


def rewrite_config(config: dict, arch: Architecture, res: Resolved, *, text_model: bool | None = None) -> dict:
    """The output config.json: the source's, with only the fields slicing changes edited.
    ``text_model`` False keeps a multimodal source's layout whatever the spec's towers say (a
    format that writes the text decoder alone in that layout: MLX)."""
    out = copy.deepcopy(config)
    text = text_config(out)
    new = sliced(arch, res)
    text["num_hidden_layers"] = new.num_layers
    text["intermediate_size"] = list(new.ffn_widths)
    text["layer_types"] = list(new.layer_types)
    text["activation_sparsity_pattern"] = list(new.activation_sparsity)
    text["num_kv_shared_layers"] = new.num_kv_shared
    if res.audio_kept is not None and res.spec.audio_layers_to_skip:
        out["audio_config"]["conf_num_hidden_layers"] = len(res.audio_kept)
    if (res.spec.text_only if text_model is None else text_model) and arch.model_type == MULTIMODAL_TYPE:
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


# -- tensor shapes from config.json alone -------------------------------------------------

LAYOUT_FILE = "gemma-3n-E4B.tensors.json"  # every tensor of the published E4B checkpoints
E4B_CONFIG_FILE = "gemma-3n-E4B.config.json"  # E4B's config.json (the fields gslice reads)

# A template name with its repeated index replaced: layers.{i}, conformer.{b}, projections.{k}.
_TEMPLATE_INDEX = (
    (re.compile(r"layers\.\d+\."), "layers.{i}."),
    (re.compile(r"conformer\.\d+\."), "conformer.{b}."),
    (re.compile(r"projections\.\d+\."), "projections.{k}."),
)


def _data_text(name: str) -> str:
    return resources.files(__package__).joinpath("data", name).read_text()


@functools.cache
def _layout() -> dict[str, tuple[int, ...]]:
    raw = json.loads(_data_text(LAYOUT_FILE))
    return {n: tuple(t["shape"]) for n, t in raw["tensors"].items()}


def published_layout() -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the published E4B checkpoints (package data)."""
    return dict(_layout())


def e4b_config() -> dict:
    """config.json of google/gemma-3n-E4B (package data: every field gslice reads, with the
    published values; its shapes reproduce :func:`published_layout` exactly)."""
    return json.loads(_data_text(E4B_CONFIG_FILE))


@functools.cache
def e4b_architecture() -> Architecture:
    return architecture(e4b_config(), E4B_CONFIG_FILE)


@functools.cache
def e4b_shapes() -> Mapping[str, tuple[int, ...]]:
    """E4B's tensor shapes from its config (equal to :func:`published_layout`), read-only."""
    return MappingProxyType(shapes_from_config(e4b_config(), E4B_CONFIG_FILE))


def _template_names() -> list[str]:
    """The published layout's distinct names, each repeated index replaced by a placeholder."""
    seen: dict[str, None] = {}
    for name in _layout():
        if name.startswith(VISION_TOWER_PREFIX):
            continue
        for pattern, placeholder in _TEMPLATE_INDEX:
            name = pattern.sub(placeholder, name)
        seen[name] = None
    return list(seen)


VISION_TOWER_PREFIX = "model.vision_tower."
VISION_TOWER_ARCHITECTURE = "mobilenetv5_300m_enc"


def shapes_from_config(config: dict, where: str = "config.json") -> dict[str, tuple[int, ...]]:
    """The tensors a checkpoint with this config holds, without its weights: the published E4B
    layout's names, repeated for the config's layer/block counts, with every dimension
    recomputed from config fields (the k/v projections of KV-sharing layers included, as the
    published checkpoints store them). The vision tower is a fixed timm MobileNet-V5 whose
    shapes no config field describes: it is copied from the E4B layout."""
    arch = architecture(config, where)
    dims = _Dims.read(config, arch, where)
    out = _described_shapes(arch, dims)
    if arch.has_vision:
        if dims.vision_architecture != VISION_TOWER_ARCHITECTURE:
            raise SourceError(
                f"{where}: vision_config.architecture is {dims.vision_architecture!r}; gslice knows the shapes "
                f"of {VISION_TOWER_ARCHITECTURE!r} only (give the checkpoint folder instead of its config)"
            )
        out.update(_vision_tower_shapes())
    return out


def _described_shapes(arch: Architecture, dims: "_Dims") -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from config fields, the vision tower's own tensors excepted."""
    rules = _shape_rules(dims)
    out: dict[str, tuple[int, ...]] = {}
    for template in _template_names():
        if template not in rules:
            raise InternalError(f"no shape rule for the published tensor {template}")
        rule = rules[template]
        if rule is None:  # a tower the config does not have
            continue
        for name, layer in _instances(template, arch, dims):
            out[_rename(name, arch)] = rule(layer) if callable(rule) else rule
    return out


def _vision_tower_shapes() -> dict[str, tuple[int, ...]]:
    return {n: s for n, s in _layout().items() if n.startswith(VISION_TOWER_PREFIX)}


def _rename(name: str, arch: Architecture) -> str:
    lm = PREFIXES[MULTIMODAL_TYPE]
    return arch.prefix + name[len(lm):] if name.startswith(lm) else name


def _instances(template: str, arch: Architecture, dims: "_Dims") -> list[tuple[str, int | None]]:
    """(name, decoder layer or None) for every instance of a template name."""
    if "{i}" in template:
        return [(template.replace("{i}", str(i)), i) for i in range(arch.num_layers)]
    if "{b}" in template:
        return [(template.replace("{b}", str(b)), None) for b in range(arch.audio_blocks or 0)]
    if "{k}" in template:  # altup projections: one per extra altup input
        return [(template.replace("{k}", str(k)), None) for k in range(dims.altup - 1)]
    return [(template, None)]


@dataclass(frozen=True)
class _Dims:
    """The config fields tensor shapes depend on (missing fields take transformers' defaults)."""

    H: int
    P: int
    L: int
    vocab: int
    vocab_per_layer: int
    heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int
    laurel: int
    altup: int
    widths: tuple[int, ...]
    audio: dict | None
    vision: dict | None
    vision_architecture: str | None

    @classmethod
    def read(cls, config: dict, arch: Architecture, where: str) -> "_Dims":
        text = text_config(config)
        field = lambda key, default: _config_int(text, key, where, default=default)  # noqa: E731
        audio = config.get("audio_config") if arch.has_audio else None
        vision = config.get("vision_config") if arch.has_vision else None
        architecture = vision.get("architecture", VISION_TOWER_ARCHITECTURE) if vision else None
        if vision and not isinstance(architecture, str):
            raise SourceError(f"{where}: vision_config field architecture is {architecture!r}, expected a name")
        return cls(
            H=arch.hidden_size,
            P=arch.ple_dim,
            L=arch.num_layers,
            vocab=field("vocab_size", 262_400),
            vocab_per_layer=field("vocab_size_per_layer_input", 262_144),
            heads=field("num_attention_heads", 8),
            kv_heads=field("num_key_value_heads", 2),
            head_dim=field("head_dim", 256),
            sliding_window=field("sliding_window", 512),
            laurel=arch.laurel_rank,
            altup=arch.altup_num_inputs,
            widths=arch.ffn_widths,
            audio=_audio_dims(audio, where) if audio is not None else None,
            vision=_vision_dims(vision, where) if vision is not None else None,
            vision_architecture=architecture,
        )


def _audio_dims(audio: dict, where: str) -> dict:
    field = lambda key, default: _config_int(audio, key, where, default=default, section="audio_config")  # noqa: E731
    A = field("hidden_size", 1536)
    heads = field("conf_num_attention_heads", 8)
    channels = _int_list(audio, "sscp_conv_channel_size", [128, 32], (2,), where)
    kernels = _int_list(audio, "sscp_conv_kernel_size", [[3, 3], [3, 3]], (2, 2), where)
    strides = _int_list(audio, "sscp_conv_stride_size", [[2, 2], [2, 2]], (2, 2), where)
    freq = field("input_feat_size", 128)
    for i in range(2):  # transformers pads the frequency axis by 1 on each side
        freq = (freq + 2 - kernels[i][1]) // strides[i][1] + 1
    if freq < 1 or A % heads:
        raise SourceError(
            f"{where}: audio_config's sizes are inconsistent (hidden_size {A} over {heads} heads, "
            f"{freq} frequency bins after the subsampling convolutions)"
        )
    return {
        "A": A,
        "head": A // heads,
        "conv": field("conf_conv_kernel_size", 5),
        "c0": channels[0],
        "c1": channels[1],
        "k0": tuple(kernels[0]),
        "k1": tuple(kernels[1]),
        "proj_in": channels[1] * freq,
        "vocab": field("vocab_size", 128),
    }


def _int_list(section: dict, key: str, default, shape: tuple[int, ...], where: str):
    """A (nested) list of positive integers of the given shape, e.g. [[3, 3], [3, 3]]."""
    value = section.get(key, default)

    def ok(v, dims) -> bool:
        if not dims:
            return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIM
        return isinstance(v, list) and len(v) == dims[0] and all(ok(x, dims[1:]) for x in v)

    if not ok(value, shape):
        want = " x ".join(map(str, shape))
        raise SourceError(f"{where}: audio_config field {key} is {_short(value)}, expected a {want} list of positive integers")
    return value


def _vision_dims(vision: dict, where: str) -> dict:
    field = lambda key, default: _config_int(vision, key, where, default=default, section="vision_config")  # noqa: E731
    return {"V": field("hidden_size", 2048), "vocab": field("vocab_size", 128)}


def _shape_rules(d: _Dims) -> dict[str, object]:
    """Template name -> shape (a tuple, or for decoder-layer tensors a function of the layer),
    or None for the tensors of a tower the config lacks."""
    lm, layer = "model.language_model.", "model.language_model.layers.{i}."
    H, P, hd = d.H, d.P, d.head_dim
    q, kv = d.heads * hd, d.kv_heads * hd
    rules: dict[str, object] = {
        lm + "embed_tokens.weight": (d.vocab, H),
        lm + "embed_tokens_per_layer.weight": (d.vocab_per_layer, d.L * P),
        lm + "per_layer_model_projection.weight": (d.L * P, H),
        lm + "per_layer_projection_norm.weight": (P,),
        lm + "norm.weight": (H,),
        lm + "altup_projections.{k}.weight": (H, H),
        lm + "altup_unembed_projections.{k}.weight": (H, H),
    }
    per_layer = {
        "altup.correct_output_scale": (H,),
        "altup.correction_coefs.weight": (d.altup, d.altup),
        "altup.modality_router.weight": (d.altup, H),
        "altup.prediction_coefs.weight": (d.altup * d.altup, d.altup),
        "altup.router_norm.weight": (H,),
        "input_layernorm.weight": (H,),
        "laurel.linear_left.weight": (d.laurel, H),
        "laurel.linear_right.weight": (H, d.laurel),
        "laurel.post_laurel_norm.weight": (H,),
        "per_layer_input_gate.weight": (P, H),
        "per_layer_projection.weight": (H, P),
        "post_attention_layernorm.weight": (H,),
        "post_feedforward_layernorm.weight": (H,),
        "post_per_layer_input_norm.weight": (H,),
        "pre_feedforward_layernorm.weight": (H,),
        "self_attn.q_proj.weight": (q, H),
        "self_attn.o_proj.weight": (H, q),
        "self_attn.k_proj.weight": (kv, H),
        "self_attn.v_proj.weight": (kv, H),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
    }
    for suffix, shape in per_layer.items():
        rules[layer + suffix] = lambda i, shape=shape: shape
    rules[layer + "mlp.gate_proj.weight"] = lambda i: (d.widths[i], H)
    rules[layer + "mlp.up_proj.weight"] = lambda i: (d.widths[i], H)
    rules[layer + "mlp.down_proj.weight"] = lambda i: (H, d.widths[i])
    rules.update(_audio_rules(d))
    rules.update(_vision_embedder_rules(d))
    return rules


def _audio_rules(d: _Dims) -> dict[str, object]:
    a = d.audio
    names = {
        "model.audio_tower.subsample_conv_projection.conv_0.conv.weight": lambda: (a["c0"], 1, *a["k0"]),
        "model.audio_tower.subsample_conv_projection.conv_0.norm.weight": lambda: (a["c0"],),
        "model.audio_tower.subsample_conv_projection.conv_1.conv.weight": lambda: (a["c1"], a["c0"], *a["k1"]),
        "model.audio_tower.subsample_conv_projection.conv_1.norm.weight": lambda: (a["c1"],),
        "model.audio_tower.subsample_conv_projection.input_proj_linear.weight": lambda: (a["A"], a["proj_in"]),
        "model.embed_audio.embedding.weight": lambda: (a["vocab"], a["A"]),
        "model.embed_audio.embedding_projection.weight": lambda: (d.H, a["A"]),
        "model.embed_audio.hard_embedding_norm.weight": lambda: (a["A"],),
        "model.embed_audio.soft_embedding_norm.weight": lambda: (a["A"],),
    }
    block = "model.audio_tower.conformer.{b}."
    square = lambda: (a["A"], a["A"])  # noqa: E731
    vector = lambda: (a["A"],)  # noqa: E731
    names.update({
        block + "attention.attn.k_proj.weight": square,
        block + "attention.attn.q_proj.weight": square,
        block + "attention.attn.v_proj.weight": square,
        block + "attention.attn.relative_position_embedding.pos_proj.weight": square,
        block + "attention.attn.per_dim_scale": lambda: (a["head"],),
        block + "attention.post.weight": square,
        block + "attention.post_norm.weight": vector,
        block + "attention.pre_attn_norm.weight": vector,
        block + "lconv1d.conv_norm.weight": vector,
        block + "lconv1d.depthwise_conv1d.weight": lambda: (a["A"], 1, a["conv"]),
        block + "lconv1d.linear_end.weight": square,
        block + "lconv1d.linear_start.weight": lambda: (2 * a["A"], a["A"]),
        block + "lconv1d.pre_layer_norm.weight": vector,
        block + "norm.weight": vector,
    })
    for ffw in ("ffw_layer_start", "ffw_layer_end"):  # width fixed at 4 x hidden in transformers
        names[f"{block}{ffw}.ffw_layer_1.weight"] = lambda: (4 * a["A"], a["A"])
        names[f"{block}{ffw}.ffw_layer_2.weight"] = lambda: (a["A"], 4 * a["A"])
        names[f"{block}{ffw}.pre_layer_norm.weight"] = vector
        names[f"{block}{ffw}.post_layer_norm.weight"] = vector
    return {n: (f() if a is not None else None) for n, f in names.items()}


def _vision_embedder_rules(d: _Dims) -> dict[str, object]:
    v = d.vision
    names = {
        "model.embed_vision.embedding.weight": lambda: (v["vocab"], v["V"]),
        "model.embed_vision.embedding_projection.weight": lambda: (d.H, v["V"]),
        "model.embed_vision.hard_embedding_norm.weight": lambda: (v["V"],),
        "model.embed_vision.soft_embedding_norm.weight": lambda: (v["V"],),
    }
    return {n: (f() if v is not None else None) for n, f in names.items()}


def output_shapes(arch: Architecture, shapes: Mapping[str, Sequence[int]], res: Resolved) -> dict[str, tuple[int, ...]]:
    """The output tensor shapes of a slice, by the same mapping :func:`plan_tensors` uses."""
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        t = _map_tensor(name, len(shape), arch, res)
        if t is not None:
            out[t.name] = engine.output_shape(shape, t.op)
    return out


# -- what a runtime holds in memory -------------------------------------------------------

def ple_table_name(prefix: str) -> str:
    return prefix + PLE_TABLE


def loaded_by_transformers(name: str, text: dict, prefix: str) -> bool:
    """False for the k/v projections and k_norm stored for KV-sharing layers: transformers
    builds no module for them and drops them on load."""
    if not name.startswith(prefix):
        return True
    m = _LAYER.match(name[len(prefix):])
    if not m or m.group(2) not in KV_TENSORS:
        return True
    return int(m.group(1)) < text["num_hidden_layers"] - text.get("num_kv_shared_layers", 0)


def kv_cache_bytes(text: dict, context: int, bytes_per_value: int = 2) -> int:
    """K and V cache of one sequence of ``context`` tokens: each layer before the KV-sharing
    region stores num_key_value_heads x head_dim values for K and for V per token, sliding
    layers at most sliding_window tokens; KV-sharing layers store nothing. ``text`` is a text
    config :func:`architecture` accepted (its fields are checked there)."""
    L = text["num_hidden_layers"]
    first_shared = L - text.get("num_kv_shared_layers", 15)
    per_token = 2 * text.get("num_key_value_heads", 2) * text.get("head_dim", 256) * bytes_per_value
    window = text.get("sliding_window", 512)
    layer_types = text.get("layer_types") or _default_layer_types(L)
    tokens = sum(min(context, window) if layer_types[i] == "sliding_attention" else context for i in range(first_shared))
    return tokens * per_token
