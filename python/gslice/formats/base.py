"""What the model knowledge hands to the formats: every output tensor of a slice as a source
tensor, a slice operation and a *role*, the format-independent description of what the tensor
is. A format maps roles to its own names, types and metadata (see the format modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .. import engine
from ..errors import SpecError

if TYPE_CHECKING:
    from ..slicing import SlicePlan


@dataclass(frozen=True)
class Role:
    """What an output tensor is, for the formats.

    ``kind`` names the tensor within its model part in the model's own vocabulary (for Gemma 3n
    the checkpoint name relative to the decoder, without the layer index: ``self_attn.q_proj.weight``,
    ``embed_tokens.weight``, ``altup_projections.weight``); ``layer`` is its output decoder layer
    and ``index`` its place in a numbered family (AltUp projection k). ``module`` is the kind of
    module the weight belongs to (``linear``, ``embedding``, or None for norms, scalars and
    convolutions) and ``target`` the group of weight-only quantization targets it is in:
    ``decoder`` (quantized whenever a format quantizes), ``embeddings`` and ``audio`` (on request),
    or None (never)."""

    part: str  # "text", "audio" or "vision"
    kind: str
    layer: int | None = None
    index: int | None = None
    module: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class SlicedTensor:
    """One tensor of the slice: checkpoint name, source tensor, operation and role."""

    name: str
    source: str
    op: engine.Op = field(default_factory=engine.copy)
    role: Role = Role("text", "")


class Format(Protocol):
    """An output format: a small frozen object holding the user's options (a quantization
    scheme, a GGUF type...). ``prepare`` maps a slice's tensors and config to what is written,
    refusing with SpecError what the format cannot express; ``to_json`` records the options
    in the manifest and ``from_json`` reads them back (``gslice verify``, ``bulk --resume``)."""

    name: str

    def prepare(self, plan: "SlicePlan") -> "Prepared": ...

    def to_json(self) -> dict: ...


class Prepared(Protocol):
    """A slice laid out by one format: the engine's tensors, and how to write one output."""

    tensors: tuple[engine.TensorPlan, ...]

    def output_plan(self, plan: "SlicePlan", out, *, overwrite: bool, manifest: engine.Manifest, title: str | None) -> engine.OutputPlan: ...

    def describe(self, plan: "SlicePlan") -> dict: ...

    def figures(self, plan: "SlicePlan") -> dict | None:
        """The format's part of the report that depends on the plan alone (computed before
        anything is written), handed back to ``report`` with the engine's result."""

    def report(self, plan: "SlicePlan", figures: dict | None, result: engine.EngineReport) -> dict | None: ...


def guard_runtime(plan: "SlicePlan", runtime: str, option: str) -> None:
    """Refuses, in one line naming the rule and the offending layer or width, a slice that the
    runtime a format is for would refuse or compute wrong (:mod:`gslice.runtimes`); ``option``
    names the format in the message (``--format gguf``)."""
    from .. import runtimes

    verdict = runtimes.compatibility(plan.arch, plan.resolved)[runtime]
    if verdict.ok:
        return
    p = verdict.problems[0]
    more = f" (and {len(verdict.problems) - 1} more)" if len(verdict.problems) > 1 else ""
    raise SpecError(f"{option}: {runtime} {runtimes.EFFECTS[p.effect]} ({p.rule}): {p.message}{more}")


def quantization_report(figures: dict, result: engine.EngineReport) -> dict:
    """The report of a quantizing format: ``figures`` (what it said before writing, with
    ``weight_of``: packed name -> weight name) and, per quantized tensor, sizes and errors
    (dequantized values against the sliced source; the ``rel_`` figures are relative to the
    weight's RMS). Totals over the whole output; the error figures are None when nothing was
    quantized (a dry run). Cannot fail."""
    figures = dict(figures)
    weight_of = figures.pop("weight_of")
    tensors = [
        {
            "name": weight_of.get(q.name, q.name),
            "source": q.source,
            "shape": list(q.shape),
            "bytes_before": q.bytes_before,
            "bytes_after": q.bytes_after,
            "weight_rms": q.weight_rms,
            "rms_error": q.rms_error,
            "max_abs_error": q.max_abs_error,
            "rel_rms_error": q.rel_rms_error,
            "rel_max_abs_error": q.rel_max_abs_error,
        }
        for q in result.quantized
    ]
    rel = [t["rel_rms_error"] for t in tensors]
    worst = max(tensors, key=lambda t: t["rel_rms_error"], default=None)
    return {
        **figures,
        "tensors": tensors,
        "quantized_bytes_before": sum(t["bytes_before"] for t in tensors),
        "quantized_bytes_after": sum(t["bytes_after"] for t in tensors),
        "output_bytes": result.outputs[0].tensor_bytes,
        "rel_rms_error_mean": sum(rel) / len(rel) if rel else None,
        "rel_rms_error_max": worst["rel_rms_error"] if worst else None,
        "rel_rms_error_worst": worst["name"] if worst else None,
        "rel_max_abs_error_max": max((t["rel_max_abs_error"] for t in tensors), default=None),
    }
