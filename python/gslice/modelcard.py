"""The README.md written into every output: base model, the exact spec, and the tool."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from . import __version__
from .units import fmt_params

if TYPE_CHECKING:
    from .formats.safetensors import QuantOptions
    from .slicing import SlicePlan


def model_card(plan: "SlicePlan", title: str | None = None, quant: "QuantOptions | None" = None, quantized: int = 0) -> str:
    """``quant``: the compressed-tensors quantization, with ``quantized`` weights packed."""
    src = plan.source
    params = plan.params()
    front = ["---", "library_name: transformers", "license: gemma"]
    if src.repo_id:
        front.append(f"base_model: {src.repo_id}")
    front += ["tags:", "- matformer", "- gemma3n", "- gslice"]
    if quant is not None:
        front += ["- compressed-tensors", f"- {quant.scheme}"]
    front += ["---", ""]
    kept, widths = plan.resolved.kept, plan.resolved.widths
    lines = [
        f"# {title or 'Gemma 3n slice'}",
        "",
        f"Cut from `{src.label}`{f' (revision {src.revision})' if src.revision else ''} "
        f"with gslice {__version__}, without retraining (MatFormer slicing).",
        "",
        f"- layers: {len(kept)} of {plan.arch.num_layers}; skipped: {list(plan.spec.layers_to_skip) or 'none'}",
        f"- FFN widths per kept layer: {list(widths)}",
        f"- effective parameters (text decoder without embeddings): {fmt_params(params.effective)} ({params.effective:,})",
        f"- total parameters: {fmt_params(params.total)} ({params.total:,})",
    ]
    if plan.spec.drop_vision or plan.spec.drop_audio:
        dropped = [n for n, d in (("vision", plan.spec.drop_vision), ("audio", plan.spec.drop_audio)) if d]
        lines.append(f"- towers removed: {', '.join(dropped)}")
    if quant is not None:
        q = quant
        lines.append(
            f"- quantization: {q.scheme}, symmetric, groups of {q.group_size}, BF16 scales, in the compressed-tensors "
            f"`pack-quantized` format (load with transformers and the `compressed-tensors` package); "
            f"{quantized} weights quantized, the rest unchanged"
        )
    lines += ["", "Spec:", "", "```json", json.dumps(plan.spec.to_json(), indent=2), "```", ""]
    return "\n".join(front + lines)
