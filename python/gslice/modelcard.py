"""The README.md written into every output: base model, the exact spec, and the tool."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .units import fmt_params

if TYPE_CHECKING:
    from .formats.safetensors import QuantOptions
    from .slicing import SlicePlan


def model_card(plan: "SlicePlan", title: str | None = None, quant: "QuantOptions | None" = None, quantized: int = 0) -> str:
    """A Hugging Face checkpoint's card. ``quant``: the compressed-tensors quantization, with
    ``quantized`` weights packed."""
    params = plan.params()
    facts = [f"- total parameters: {fmt_params(params.total)} ({params.total:,})"]
    if plan.spec.drop_vision or plan.spec.drop_audio:
        dropped = [n for n, d in (("vision", plan.spec.drop_vision), ("audio", plan.spec.drop_audio)) if d]
        facts.append(f"- towers removed: {', '.join(dropped)}")
    if quant is not None:
        q = quant
        facts.append(
            f"- quantization: {q.scheme}, symmetric, groups of {q.group_size}, BF16 scales, in the compressed-tensors "
            f"`pack-quantized` format (load with transformers and the `compressed-tensors` package); "
            f"{quantized} weights quantized, the rest unchanged"
        )
    tags = ["compressed-tensors", quant.scheme] if quant is not None else []
    return _card(plan, title, ["library_name: transformers"], tags, facts)


def mlx_model_card(plan: "SlicePlan", title: str | None, fmt: dict) -> str:
    """An MLX folder's card (``fmt``: the MLX format's description), with the front matter
    ``mlx_lm.convert`` writes (library mlx, text generation, tag mlx) and how to run it."""
    facts = [f"- parameters written (the text decoder): {fmt_params(fmt['params'])} ({fmt['params']:,})",
             f"- {fmt['note']}"]
    if fmt["bits"] is None:
        facts.append(f"- weights: {fmt['dtype']}, as in the source")
    else:
        facts.append(f"- quantization: MLX affine, {fmt['bits']} bits, groups of {fmt['group_size']}, BF16 scales and "
                     f"biases ({fmt['quantized']} modules, those `mlx_lm.convert -q` quantizes); the rest unchanged")
    if fmt["kv_copied_from_producer"]:
        facts.append("- the KV-sharing layers' k_proj, v_proj and k_norm (absent from the source, never read by mlx-lm "
                     "with its KV cache) are copies of their KV producer's")
    usage = ["", "Run it with mlx-lm:", "", "```sh", "pip install mlx-lm",
             'mlx_lm.generate --model <this folder> --prompt "Write a haiku about the sea."', "```"]
    return _card(plan, title, ["library_name: mlx", "pipeline_tag: text-generation"], ["mlx"], facts, usage)


def _card(plan: "SlicePlan", title: str | None, front: Sequence[str], tags: Sequence[str], facts: Sequence[str],
          after: Sequence[str] = ()) -> str:
    src = plan.source
    params = plan.params()
    head = ["---", *front, "license: gemma"]
    if src.repo_id:
        head.append(f"base_model: {src.repo_id}")
    head += ["tags:", *(f"- {t}" for t in ("matformer", "gemma3n", "gslice", *tags)), "---", ""]
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
        *facts,
        *after,
        "",
        "Spec:",
        "",
        "```json",
        json.dumps(plan.spec.to_json(), indent=2),
        "```",
        "",
    ]
    return "\n".join(head + lines)
