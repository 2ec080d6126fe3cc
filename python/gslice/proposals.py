"""Public sub-billion slicing proposals for Gemma 3n, each with gslice's verdict.

The proposals (package data, exactly as published) are run through the same validation a
slice gets (:func:`gslice.spec.SliceSpec.build` for types, :func:`gslice.gemma3n.spec_problems`
for the architecture's rules) against E4B, plus checks of their own claims: the layer count
they state against their skip list, the audio encoder they describe against the real one,
and the size they claim against shape arithmetic. Each broken rule is one message.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

from . import gemma3n
from .catalogue import slug
from .errors import SpecError
from .gemma3n import Architecture, ParamCounts, Resolved
from .spec import SliceSpec

PROPOSALS_FILE = "community-subbillion-proposals.json"
# Google's own table differs from shape arithmetic by up to 0.02B; a claim further off is wrong.
SIZE_TOLERANCE_B = 0.02


@dataclass(frozen=True)
class ProposalVerdict:
    id: str
    name: str
    kind: str  # "text" or "audio"
    claims: dict  # the proposal's own figures, as published
    problems: tuple[str, ...]  # one message per broken rule
    params: ParamCounts | None  # text proposals: by shape arithmetic on E4B
    notes: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


@functools.cache
def proposals() -> tuple[ProposalVerdict, ...]:
    data = json.loads(resources.files(__package__).joinpath("data", PROPOSALS_FILE).read_text())
    arch = gemma3n.e4b_architecture()
    return tuple(text_verdict(p, arch) for p in data["text"]) + tuple(audio_verdict(p, arch) for p in data["audio"])


def text_verdict(entry: dict, arch: Architecture) -> ProposalVerdict:
    skip, raw_widths = entry["layers_to_skip"], entry["ffn_hidden_dims"]
    problems: list[str] = []
    try:
        SliceSpec.build(layers_to_skip=skip, ffn_dims=raw_widths)
    except SpecError as e:
        floats = sum(isinstance(w, float) for w in raw_widths)
        problems.append(f"{e} ({floats} of the {len(raw_widths)} widths are floats)" if floats else str(e))
    widths = tuple(int(w) for w in raw_widths)  # the remaining rules, as if written as integers
    kept = tuple(i for i in range(arch.num_layers) if i not in set(skip))
    claimed = entry.get("claimed_layers")
    if claimed is not None and claimed != len(kept):
        problems.append(
            f"claimed_layers: {claimed}, but skipping {len(set(skip))} of E4B's {arch.num_layers} layers "
            f"leaves {len(kept)}"
        )
    problems += gemma3n.spec_problems(arch, SliceSpec(layers_to_skip=tuple(skip), ffn_dims=widths))
    params = _params_of(arch, kept if len(kept) == len(widths) else tuple(range(len(widths))), widths)
    size = _size_problem(entry.get("claimed_params_b"), params, len(widths))
    if size:
        problems.append(size)
    return ProposalVerdict(
        id="proposal-" + slug(entry["name"]),
        name=entry["name"],
        kind="text",
        claims=_claims(entry),
        problems=tuple(problems),
        params=params,
        notes=_width_notes(widths, entry.get("claimed_mmlu")),
    )


def _params_of(arch: Architecture, kept: tuple[int, ...], widths: tuple[int, ...]) -> ParamCounts:
    """Shape arithmetic for these kept layers and widths, whether or not the spec is valid.
    Every E4B layer has the same shapes apart from its FFN width, so when a proposal's skip
    list disagrees with its width list, the count of its widths decides the size."""
    spec = SliceSpec(layers_to_skip=tuple(i for i in range(arch.num_layers) if i not in kept), ffn_dims=widths)
    res = Resolved(spec, kept, widths, None)
    shapes = gemma3n.output_shapes(arch, gemma3n.e4b_shapes(), res)
    return gemma3n.count_params(shapes, arch.prefix)


def _size_problem(claimed_b: float | None, params: ParamCounts, layers: int) -> str | None:
    if claimed_b is None or abs(params.effective / 1e9 - claimed_b) <= SIZE_TOLERANCE_B:
        return None
    return (
        f"claimed_params_b: {claimed_b}B, but {layers} layers at the listed widths are "
        f"{params.effective / 1e9:.2f}B effective ({params.effective:,}) and {params.total / 1e9:.2f}B total "
        "parameters by shape arithmetic on E4B"
    )


def _width_notes(widths: tuple[int, ...], claimed_mmlu) -> tuple[str, ...]:
    untrained = sorted({w for w in widths if not gemma3n.is_trained_width(w)})
    if not untrained:
        return ()
    note = (
        f"widths {', '.join(map(str, untrained))} are outside the trained "
        f"{'/'.join(map(str, gemma3n.TRAINED_FFN_WIDTHS))}: no published measurement covers them"
    )
    if claimed_mmlu:
        note += f" (the claimed MMLU {claimed_mmlu} is an estimate)"
    return (note,)


def audio_verdict(entry: dict, arch: Architecture) -> ProposalVerdict:
    skip = tuple(entry["audio_layers_to_skip"])
    problems = gemma3n.spec_problems(arch, SliceSpec(audio_layers_to_skip=skip))
    real_ffn = 4 * (arch.audio_hidden or 0)
    width = entry.get("claimed_intermediate_size")
    if width is not None and width != real_ffn:
        problems.append(str(gemma3n.audio_ffn_refusal(width)))
    source_blocks = entry.get("claimed_source_layers")
    if source_blocks is not None and source_blocks != arch.audio_blocks:
        problems.append(
            f"claimed_source_layers: {source_blocks}, but E4B's audio encoder has {arch.audio_blocks} Conformer blocks"
        )
    source_ffn = entry.get("claimed_source_intermediate_size")
    if source_ffn is not None and source_ffn != real_ffn:
        problems.append(
            f"claimed_source_intermediate_size: {source_ffn}, but E4B's audio FFN width is {real_ffn} "
            f"(4 x hidden size {arch.audio_hidden})"
        )
    return ProposalVerdict(
        id="proposal-" + slug(entry["name"]),
        name=entry["name"],
        kind="audio",
        claims=_claims(entry),
        problems=tuple(problems),
        params=None,
    )


def _claims(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k.startswith("claimed_") or k == "target"}
