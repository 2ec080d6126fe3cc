"""How gslice's own outputs are evaluated (``gslice bulk --eval``): the runtime each output format
runs in, and the model its outputs are measured against.

KL and top-1 agreement compare two models in one runtime (two runtimes' numerics differ by more
than a mild slice does), so the reference must be the source in the outputs' runtime:

* Hugging Face folders: the source checkpoint itself, in transformers;
* GGUF files: the source written by gslice as one more, unsliced GGUF file of the run,
  memory-mapped by llama.cpp like the outputs: at the outputs' own type when that is a float
  type (f32, f16, bf16: the source's weights as they are, or exactly rounded), and at **q8_0**
  for every quantized type. A q8_0 reference is as close to the source as a laptop runs it
  (llama.cpp measured Q8_0 at a mean KL of 0.0014 from the 16-bit model, Q4_0 at 0.072, on
  LLaMA 3 8B: tools/perplexity/README.md of the llama.cpp that llama-cpp-python 0.3.36
  vendors), so a q4_0 output's figures include what 4-bit quantization costs on top of the
  slicing, and every quantized run of the same source shares one reference, whose
  log-probabilities are cached once: q8_0 and q4_0 outputs of separate runs are comparable.
  E4B's text decoder is 7.3 GB as q8_0 against 13.7 GB as bf16;
* MLX folders: the same rule with MLX's affine quantization (8 bits for a quantized run, the
  same group size; the outputs' own format when they are not quantized).
"""

from __future__ import annotations

from dataclasses import replace

from ..formats.base import Format

RUNTIME = {"safetensors": "transformers", "gguf": "llama.cpp", "mlx": "mlx-lm"}
FLOAT_GGUF_TYPES = ("f32", "f16", "bf16")
REFERENCE_GGUF_TYPE = "q8_0"
REFERENCE_MLX_BITS = 8


def runtime(fmt: Format) -> str:
    """The runtime outputs of ``fmt`` are evaluated in."""
    return RUNTIME[fmt.name]


def reference_format(fmt: Format) -> Format | None:
    """The format the source is written in to be the reference of outputs in ``fmt``; None:
    the source checkpoint itself is the reference (see the module docstring)."""
    if fmt.name == "gguf":
        return fmt if fmt.type is None or fmt.type in FLOAT_GGUF_TYPES else replace(fmt, type=REFERENCE_GGUF_TYPE)
    if fmt.name == "mlx":
        return fmt if getattr(fmt, "bits", None) is None else replace(fmt, bits=REFERENCE_MLX_BITS)
    return None
