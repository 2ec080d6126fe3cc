"""The preset catalogue: Google's published configurations and gslice's own presets.

Every preset is defined for the E4B layout (35 layers, FFN width 16384 per layer): a list of
layers to skip and one FFN width per kept layer. Applied to a source (:meth:`Preset.spec_for`):

* layer indices are used as they are, and only for a source with E4B's layer count (35);
  they are never remapped onto another layer count;
* widths are scaled by ``source width / 16384``, which must give a whole number (the tiny
  E4B-shaped test checkpoints, FFN 64, turn 8192 into 32); a source whose layers differ in
  width is refused, since there is no single full width to scale from.

gslice's presets skip whole 4-sliding + 1-full blocks of E4B (so layer_types stay regular)
and always keep the block holding the KV producers 18 and 19. Most give the full-attention
layers the wider FFN, as Google's layer-level configurations do; the others keep layers 0-19,
skip only within the KV-sharing layers 20-34 and use one width everywhere, so that llama.cpp,
which fixes those facts in code, computes them too. Their names are their effective parameter
counts on E4B, computed from shapes. No quality figure exists for any of them; those using
widths other than the trained 8192/16384 are marked "unmeasured quality".
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from . import gemma3n
from .arguments import bool_arg
from .errors import ArgumentError, SourceError, SpecError
from .gemma3n import Architecture, ParamCounts
from .official_configs import OfficialConfig, hub_configs, shipped_configs
from .spec import SliceSpec

GOOGLE, GSLICE = "google", "gslice"
# which towers stay: name -> (drop_vision, drop_audio)
MODALITIES = {"all": (False, False), "text+audio": (True, False), "text": (True, True)}

# gslice's presets: (indices of the kept 5-layer blocks of E4B, FFN width of sliding-attention
# layers, FFN width of full-attention layers). Blocks 0-6 are layers 0-4, 5-9, ..., 30-34;
# block 3 (layers 15-19) holds the KV producers. Layer-sharing blocks 4 and 5 go first, as
# in Google's E2B, then the middle blocks 2 and 1; the first and last blocks stay.
GSLICE_SHAPES = (
    ((0, 3, 6), 2048, 8192),
    ((0, 3, 6), 4096, 8192),
    ((0, 1, 3, 6), 4096, 8192),
    ((0, 3, 6), 8192, 16384),
    ((0, 1, 3, 6), 8192, 8192),
    ((0, 1, 3, 6), 8192, 16384),
    ((0, 1, 2, 3, 6), 8192, 16384),
) + (
    # Presets every runtime computes, llama.cpp included (runtimes.py): layers 0-19 all kept,
    # so the KV-sharing start stays at layer 20 with producers 18 and 19 and the sparse layers
    # stay 0-9; only KV-sharing blocks are skipped (4, then 5, as above); one width everywhere.
    ((0, 1, 2, 3), 2048, 2048),
    ((0, 1, 2, 3), 4096, 4096),
    ((0, 1, 2, 3, 6), 4096, 4096),
    ((0, 1, 2, 3, 5, 6), 4096, 4096),
    ((0, 1, 2, 3, 6), 8192, 8192),
    ((0, 1, 2, 3), 16384, 16384),
)


@dataclass(frozen=True)
class Preset:
    """A slicing configuration for the E4B layout, with its parameter counts on E4B."""

    id: str
    name: str
    origin: str  # "google" (published) or "gslice"
    layers_to_skip: tuple[int, ...]
    ffn_dims: tuple[int, ...]  # one per kept layer, in E4B units (full width 16384)
    params: ParamCounts  # computed from shapes on E4B, both towers kept
    published_effective_b: float | None = None
    published_mmlu: float | None = None  # percent, pre-trained model

    @property
    def layers(self) -> int:
        return len(self.ffn_dims)

    @property
    def slug(self) -> str:
        """The folder name `gslice bulk` writes this preset to."""
        return self.id

    @property
    def trained_widths(self) -> bool:
        return all(gemma3n.is_trained_width(w) for w in self.ffn_dims)

    @property
    def quality(self) -> str:
        if self.published_mmlu is not None:
            return f"MMLU {self.published_mmlu:.1f}% (published)"
        return "unmeasured" if self.trained_widths else "unmeasured quality (untrained widths)"

    def spec_for(self, arch: Architecture, **towers) -> SliceSpec:
        """The spec for a source: E4B indices, widths scaled to the source's full width.
        ``towers``: drop_vision / drop_audio / audio_layers_to_skip, passed through."""
        reference = gemma3n.e4b_architecture()
        if arch.num_layers != reference.num_layers:
            raise SpecError(
                f"preset {self.id}: defined for the {reference.num_layers}-layer E4B layout, but the source has "
                f"{arch.num_layers} layers (preset layer indices are not remapped to other layer counts)"
            )
        full = _single_width(arch, self.id)
        widths = tuple(_scaled(w, full, reference.ffn_widths[0], self.id) for w in self.ffn_dims)
        return SliceSpec(layers_to_skip=self.layers_to_skip, ffn_dims=widths, **towers)


def _single_width(arch: Architecture, preset: str) -> int:
    widths = sorted(set(arch.ffn_widths))
    if len(widths) != 1:
        raise SpecError(
            f"preset {preset}: the source's layers have different FFN widths ({', '.join(map(str, widths))}); "
            "presets scale widths from one full width per layer"
        )
    return widths[0]


def _scaled(width: int, source_full: int, reference_full: int, preset: str) -> int:
    if width * source_full % reference_full:
        raise SpecError(
            f"preset {preset}: width {width} scaled to the source's FFN width {source_full} is "
            f"{width} x {source_full} / {reference_full} = {width * source_full / reference_full:g}, not a whole number"
        )
    return width * source_full // reference_full


def e4b_params(spec: SliceSpec, where: str = "preset") -> ParamCounts:
    """Parameter counts of a spec applied to E4B, from shapes (raises SpecError if invalid)."""
    arch = gemma3n.e4b_architecture()
    try:
        res = gemma3n.resolve(arch, spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    shapes = gemma3n.output_shapes(arch, gemma3n.e4b_shapes(), res)
    return gemma3n.count_params(shapes, gemma3n.output_prefix(arch, spec))


# -- Google's configurations ----------------------------------------------------------------


def official_presets(from_hub: bool = False) -> tuple[Preset, ...]:
    rows = hub_configs() if from_hub else shipped_configs()
    return _official(rows)


@functools.cache
def _official(rows: tuple[OfficialConfig, ...]) -> tuple[Preset, ...]:
    return tuple(_official_preset(r) for r in rows)


def _official_preset(row: OfficialConfig) -> Preset:
    spec = SliceSpec(layers_to_skip=row.layers_to_skip, ffn_dims=row.ffn_dims)
    try:
        params = e4b_params(spec, f"line {row.line} ({row.name!r})")
    except SpecError as e:
        raise SourceError(f"published configuration {e}") from None
    return Preset(
        id=official_id(row.name),
        name=row.name,
        origin=GOOGLE,
        layers_to_skip=row.layers_to_skip,
        ffn_dims=row.ffn_dims,
        params=params,
        published_effective_b=row.published_effective_b,
        published_mmlu=row.published_mmlu,
    )


def official_id(name: str) -> str:
    """'Config for E1.96B (layer-level)' -> 'google-e1.96b-layer'; 'Main model' -> 'google-main'."""
    s = re.sub(r"(?i)^config for\s+", "", name)
    s = re.sub(r"(?i)\b(official|model)\b", " ", s)
    s = re.sub(r"(?i)-level\b", "", s)
    return "google-" + slug(s)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


# -- gslice's presets -----------------------------------------------------------------------


@functools.cache
def gslice_presets() -> tuple[Preset, ...]:
    arch = gemma3n.e4b_architecture()
    blocks = _blocks(arch.layer_types)
    out = [_gslice_preset(arch, blocks, kept_blocks, sliding, full) for kept_blocks, sliding, full in GSLICE_SHAPES]
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise AssertionError(f"two gslice presets round to one name: {ids}")
    return tuple(sorted(out, key=lambda p: p.params.effective))


def _blocks(layer_types: tuple[str, ...]) -> list[list[int]]:
    """Runs of layers each ending at a full-attention layer: [[0..4], [5..9], ...]."""
    blocks: list[list[int]] = [[]]
    for i, kind in enumerate(layer_types):
        blocks[-1].append(i)
        if kind == "full_attention" and i + 1 < len(layer_types):
            blocks.append([])
    return blocks


def _gslice_preset(arch: Architecture, blocks, kept_blocks, sliding: int, full: int) -> Preset:
    kept = [i for b in kept_blocks for i in blocks[b]]
    skip = tuple(i for i in range(arch.num_layers) if i not in kept)
    widths = tuple(full if arch.layer_types[i] == "full_attention" else sliding for i in kept)
    params = e4b_params(SliceSpec(layers_to_skip=skip, ffn_dims=widths), "gslice preset")
    name = f"gslice-e{params.effective / 1e9:.2f}b"
    return Preset(id=name, name=name, origin=GSLICE, layers_to_skip=skip, ffn_dims=widths, params=params)


# -- the whole catalogue ------------------------------------------------------------------


def presets(from_hub: bool = False) -> tuple[Preset, ...]:
    """Google's configurations (shipped, or the live Hub CSV), then gslice's presets."""
    return official_presets(bool_arg(from_hub, "from_hub")) + gslice_presets()


def find_preset(name: str, from_hub: bool = False) -> Preset:
    """The preset whose id or name is exactly ``name``. A public proposal's name is refused
    with its verdict; anything else gets a did-you-mean suggestion."""
    from .proposals import proposals

    catalogue = presets(from_hub)
    for p in catalogue:
        if name in (p.id, p.name):
            return p
    for v in proposals():
        if name in (v.id, v.name):
            raise SpecError(
                f"preset {name!r} is a public proposal that breaks the architecture's rules, so gslice refuses it: "
                + "; ".join(v.problems)
            )
    known = [p.id for p in catalogue] + [p.name for p in catalogue] + [v.id for v in proposals()]
    guesses = _closest(name, known)
    hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
    raise SpecError(f"unknown preset {name!r}{hint} (`gslice presets` lists them)")


def _closest(name: str, known: list[str]) -> list[str]:
    """Suggestions for a miss: a case-insensitive match, ids the name starts or ends
    ('e2b' -> 'google-e2b'), else difflib's closest."""
    lowered = {k.lower(): k for k in known}
    query = name.lower()
    if query in lowered:
        return [lowered[query]]
    for matches in ([k for k in lowered if k.startswith(query)], [k for k in lowered if k.endswith("-" + query)]):
        if 0 < len(matches) <= 3:
            return [lowered[k] for k in matches]
    return [lowered[k] for k in difflib.get_close_matches(query, list(lowered), n=1, cutoff=0.6)]


def spec_with_preset(
    arch: Architecture, spec: SliceSpec | None, preset: "str | Preset | None", modalities: str = "all", from_hub: bool = False
) -> "tuple[SliceSpec, Preset | None]":
    """(the spec to slice with, the Preset or None): a preset's layers and widths for this
    source, with the tower options of ``spec`` and ``modalities``."""
    if spec is not None and not isinstance(spec, SliceSpec):
        raise ArgumentError(f"spec must be a SliceSpec or None, not {type(spec).__name__}")
    if preset is not None and not isinstance(preset, (str, Preset)):
        raise ArgumentError(f"preset must be a preset id or name (str), not {type(preset).__name__}")
    drop_vision, drop_audio = _towers(modalities)
    base = spec or SliceSpec()
    if preset is not None and (base.layers_to_skip or base.ffn_dims is not None):
        raise SpecError("give either a preset or layers_to_skip/ffn_dims, not both")
    towers = dict(
        audio_layers_to_skip=base.audio_layers_to_skip,
        drop_vision=base.drop_vision or drop_vision,
        drop_audio=base.drop_audio or drop_audio,
    )
    if preset is None:
        return SliceSpec(layers_to_skip=base.layers_to_skip, ffn_dims=base.ffn_dims, **towers), None
    found = find_preset(preset, from_hub) if isinstance(preset, str) else preset
    return found.spec_for(arch, **towers), found


def _towers(modalities: str) -> tuple[bool, bool]:
    if not isinstance(modalities, str) or modalities not in MODALITIES:
        raise SpecError(f"modalities: {modalities!r} is not one of {', '.join(MODALITIES)}")
    return MODALITIES[modalities]
