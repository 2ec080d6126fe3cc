"""Sizes of a slice from tensor shapes alone: parameters, bytes on disk, inference RAM.

Shapes come from a checkpoint folder's shard headers (no weights read) or from a config.json
and the published E4B layout (:func:`gslice.gemma3n.shapes_from_config`). Figures:

* parameters: effective (text decoder without ``embed_tokens`` and ``embed_tokens_per_layer``),
  text, audio, vision, total;
* bytes on disk per scheme, tensor data only (safetensors headers excluded):
  ``bf16`` 2 bytes per parameter; ``int8`` / ``int4`` pack the text decoder's 2-D linear
  weights (:data:`gslice.gemma3n.QUANT_LAYER_WEIGHTS`, input width a multiple of the
  group size) in the compressed-tensors ``pack-quantized`` layout: ``weight_packed`` int32
  [rows, ceil(cols x bits / 32)], ``weight_scale`` bf16 [rows, ceil(cols / group)],
  ``weight_shape`` int64[2]. Everything else (embeddings, norms, convolutions, towers) stays
  bf16;
* inference RAM = resident weights + KV cache (:data:`RAM_FORMULA`);
* which runtimes compute the slice correctly (:mod:`gslice.runtimes`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from . import engine, gemma3n, runtimes
from .catalogue import Preset, spec_with_preset
from .arguments import bool_arg, int_arg, path_arg
from .errors import SourceError, SpecError
from .jsonfile import read_json
from .gemma3n import ParamCounts
from .runtimes import Compatibility
from .spec import SliceSpec

SCHEMES = ("bf16", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
DEFAULT_GROUP_SIZE = 128
DEFAULT_CONTEXT = 4096
BF16 = 2
E4B_LABEL = "google/gemma-3n-E4B (config.json shipped with gslice)"

RAM_FORMULA = (
    "RAM = resident weights + KV cache. Resident weights: every tensor in its stored format, "
    "except the k/v projections that KV-sharing layers store but transformers never loads; "
    "'PLE on disk' subtracts the per-layer embedding table, which a memory-mapping runtime "
    "leaves on disk. KV cache (bf16, one sequence): for each layer before the KV-sharing "
    "region, 2 (K and V) x num_key_value_heads x head_dim x 2 bytes x tokens, where tokens = "
    "min(context, sliding_window) for sliding-attention layers and context for full-attention "
    "layers; KV-sharing layers add nothing. Activations and runtime overhead are not included."
)


@dataclass(frozen=True)
class Footprint:
    """Disk and memory figures for one storage scheme."""

    scheme: str  # bf16 | int8 | int4
    disk_bytes: int  # tensor data on disk
    quantized_params: int  # parameters packed to int8/int4 (0 for bf16)
    resident_bytes: int  # weights a runtime holds, the PLE table included
    ple_bytes: int  # the per-layer embedding table (bf16 in every scheme)
    kv_cache_bytes: int

    @property
    def ram_bytes(self) -> int:
        """Estimated RAM with the PLE table resident."""
        return self.resident_bytes + self.kv_cache_bytes

    @property
    def ram_ple_on_disk_bytes(self) -> int:
        """Estimated RAM when the PLE table stays memory-mapped on disk."""
        return self.resident_bytes - self.ple_bytes + self.kv_cache_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "ram_bytes": self.ram_bytes, "ram_ple_on_disk_bytes": self.ram_ple_on_disk_bytes}


@dataclass(frozen=True)
class SizePlan:
    """What a slice will be, before it is written: shape, parameters, disk and RAM."""

    source: str
    preset: str | None
    spec: SliceSpec
    source_layers: int
    layers: int
    ffn_dims: tuple[int, ...]
    num_kv_shared_layers: int
    params: ParamCounts
    context: int
    group_size: int
    footprints: tuple[Footprint, ...]  # one per scheme, in SCHEMES order
    runtimes: Compatibility  # which runtimes compute the slice correctly

    def footprint(self, scheme: str) -> Footprint:
        for f in self.footprints:
            if f.scheme == scheme:
                return f
        raise SpecError(f"quantization {scheme!r} is not one of {', '.join(SCHEMES)}")

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "preset": self.preset,
            "spec": self.spec.to_json(),
            "source_layers": self.source_layers,
            "layers": self.layers,
            "ffn_dims": list(self.ffn_dims),
            "num_kv_shared_layers": self.num_kv_shared_layers,
            "params": asdict(self.params),
            "context": self.context,
            "group_size": self.group_size,
            "footprints": {f.scheme: f.to_dict() for f in self.footprints},
            "ram_formula": RAM_FORMULA,
            "runtimes": self.runtimes.to_dict(),
        }


# -- the public entry point ---------------------------------------------------------------


def plan(
    src_or_config: str | os.PathLike | dict | None = None,
    *,
    preset: str | Preset | None = None,
    spec: SliceSpec | None = None,
    modalities: str = "all",
    context: int = DEFAULT_CONTEXT,
    group_size: int = DEFAULT_GROUP_SIZE,
    from_hub: bool = False,
) -> SizePlan:
    """Sizes of slicing ``src_or_config`` with a preset (by name) or a spec, without writing.

    ``src_or_config``: a checkpoint folder (shapes from its shard headers; a folder holding
    only config.json works too), a config.json path, a config dict, or None for E4B.
    With a preset, ``spec`` may only carry tower options (drop_vision, drop_audio,
    audio_layers_to_skip). ``modalities``: "all", "text+audio" or "text" (towers dropped on
    top of the preset or spec).
    """
    context = int_arg(context, "context")
    group_size = int_arg(group_size, "group_size")
    bool_arg(from_hub, "from_hub")
    if src_or_config is not None and not isinstance(src_or_config, dict):
        path_arg(src_or_config, "src_or_config")
    label, config, shapes_of = _load(src_or_config)
    where = str(Path(label) / "config.json") if isinstance(src_or_config, (str, os.PathLike)) and Path(src_or_config).expanduser().is_dir() else label
    arch = gemma3n.architecture(config, where)
    spec, preset_obj = spec_with_preset(arch, spec, preset, modalities, from_hub)
    res = gemma3n.resolve(arch, spec)
    shapes = shapes_of(arch, res)
    new_config = gemma3n.rewrite_config(config, arch, res)
    return size_plan(label, preset_obj.id if preset_obj else None, arch, res, shapes, new_config, context, group_size)


def size_plan(label, preset, arch, res, shapes, new_config, context=DEFAULT_CONTEXT, group_size=DEFAULT_GROUP_SIZE) -> SizePlan:
    """The figures for a resolved slice whose output shapes and config are known."""
    prefix = gemma3n.output_prefix(arch, res.spec)
    text = gemma3n.text_config(new_config)
    return SizePlan(
        source=label,
        preset=preset,
        spec=res.spec,
        source_layers=arch.num_layers,
        layers=len(res.kept),
        ffn_dims=res.widths,
        num_kv_shared_layers=text["num_kv_shared_layers"],
        params=gemma3n.count_params(shapes, prefix),
        context=context,
        group_size=group_size,
        footprints=tuple(footprint(shapes, text, prefix, s, context, group_size) for s in SCHEMES),
        runtimes=runtimes.compatibility(arch, res),
    )


def footprint(shapes: Mapping[str, Sequence[int]], text: dict, prefix: str, scheme: str, context: int, group_size: int) -> Footprint:
    bits = BITS.get(scheme)
    disk = resident = quantized = 0
    for name, shape in shapes.items():
        packed = bits is not None and gemma3n.is_quantized_linear(name, shape, prefix, group_size)
        n = tensor_bytes(shape, bits if packed else None, group_size)
        disk += n
        quantized += math.prod(shape) if packed else 0
        if gemma3n.loaded_by_transformers(name, text, prefix):
            resident += n
    ple = shapes.get(gemma3n.ple_table_name(prefix))
    return Footprint(
        scheme=scheme,
        disk_bytes=disk,
        quantized_params=quantized,
        resident_bytes=resident,
        ple_bytes=math.prod(ple) * BF16 if ple else 0,
        kv_cache_bytes=gemma3n.kv_cache_bytes(text, context, BF16),
    )


def tensor_bytes(shape: Sequence[int], bits: int | None, group_size: int) -> int:
    """bf16, or pack-quantized: int32 words of packed values + bf16 scales + int64[2] shape."""
    if bits is None:
        return math.prod(shape) * BF16
    rows, cols = shape
    packed = rows * math.ceil(cols * bits / 32) * 4
    scales = rows * math.ceil(cols / group_size) * BF16
    return packed + scales + 2 * 8


# -- where shapes come from ---------------------------------------------------------------


def _load(src):
    """(label, config, function (arch, resolved) -> output shapes)."""
    if src is None:  # E4B's shapes are computed once
        return E4B_LABEL, gemma3n.e4b_config(), lambda arch, res: gemma3n.output_shapes(arch, gemma3n.e4b_shapes(), res)
    if isinstance(src, dict):
        return "config", src, _from_config(src, "config")
    path = Path(src).expanduser()
    if path.is_file():
        config = _read_json(path)
        return str(src), config, _from_config(config, str(path))
    if path.is_dir():
        config = gemma3n.read_config(path)
        if not any(path.glob("*.safetensors")):
            return str(src), config, _from_config(config, str(path / "config.json"))
        return str(src), config, _from_headers(path, config)
    raise SourceError(f"source {src} does not exist")


def _from_config(config: dict, where: str):
    def shapes(arch, res):
        return gemma3n.output_shapes(arch, gemma3n.shapes_from_config(config, where), res)

    return shapes


def _from_headers(path: Path, config: dict):
    def shapes(arch, res):
        ck = engine.inspect(path)
        gemma3n.check_source(config, arch, ck, res)
        return gemma3n.output_shapes(arch, {n: t.shape for n, t in ck.tensors.items()}, res)

    return shapes


def _read_json(path: Path) -> dict:
    data = read_json(path, "config")
    if not isinstance(data, dict):
        raise SourceError(f"config {path} holds {type(data).__name__}, not a JSON object")
    return data

