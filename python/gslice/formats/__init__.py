"""Output formats: one module per format, each mapping the roles of a slice's tensors to its
own names, types and metadata (:mod:`.safetensors`: Hugging Face checkpoints, optionally
compressed-tensors; :mod:`.gguf`: llama.cpp; :mod:`.mlx`: mlx-lm). :mod:`.base` holds what they
share."""

from __future__ import annotations


def from_manifest(data: dict, where: str):
    """The format (with its options) an output's manifest records, checked like user input."""
    from ..errors import SourceError
    from .gguf import GGUF
    from .mlx import MLX
    from .safetensors import QuantOptions, Safetensors

    record = data.get("output_format") or {"name": "safetensors"}
    name = record.get("name") if isinstance(record, dict) else None
    if name == "safetensors":
        return Safetensors.of(QuantOptions.from_json(data.get("quant"), where))
    if name == "gguf":
        return GGUF.from_json(record, where)
    if name == "mlx":
        return MLX.from_json(record, where)
    raise SourceError(f"{where}: output_format {record!r} is not a format gslice writes")
