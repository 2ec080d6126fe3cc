"""The quantized output format: compressed-tensors ``pack-quantized``, as transformers (with the
compressed-tensors package) and vLLM load it. Model-independent; which weights are quantized
is decided in :mod:`gslice.gemma3n`.

What is written for a quantized Linear weight ``<module>.weight`` of shape [rows, cols]
(matching compressed-tensors 0.20's ``PackedQuantizationCompressor``):

* ``<module>.weight_packed``: I32 [rows, ceil(cols * bits / 32)]: ``q + 2**(bits-1)`` as
  unsigned ``bits``-bit fields, 32 / bits per word, the first element in the lowest bits
  (``pack_to_int32``);
* ``<module>.weight_scale``: BF16 [rows, cols / group_size];
* ``<module>.weight_shape``: I64 [2] = (rows, cols).

No ``weight_zero_point``: the scheme is symmetric and the library drops symmetric zero points.
int8 uses the same ``pack-quantized`` format with 8 bits (4 values per word): for weight-only
int8, compressed-tensors' own format inference picks ``pack-quantized`` (its ``int-quantized``
compressor only claims schemes that also quantize activations, W8A8), and it is the only int8
weight-only format vLLM's compressed-tensors loader accepts (``CompressedTensorsWNA16``).

The values (computed by the Rust engine, see ``rust/engine/src/quant.rs``): per row and group
of ``group_size`` columns, ``scale = bf16(absmax / 7.5)`` (int4) or ``/ 127.5`` (int8), a zero
scale replaced by 2**-7 (bf16 epsilon); ``q = round_half_even(clamp(x / scale, qmin, qmax))``
with the division in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .engine import Quantization, TensorPlan
from .errors import SpecError

SCHEMES = {"int4": 4, "int8": 8}
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 128
FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"


@dataclass(frozen=True)
class QuantOptions:
    """A quantization request: the scheme, the group size, and which optional parts
    (embeddings, the audio tower) to quantize as well."""

    scheme: str
    group_size: int = DEFAULT_GROUP_SIZE
    embeddings: bool = False
    audio: bool = False

    @property
    def bits(self) -> int:
        return SCHEMES[self.scheme]

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "bits": self.bits, "group_size": self.group_size, "format": FORMAT,
                "embeddings": self.embeddings, "audio": self.audio}

    @classmethod
    def from_json(cls, data: dict | None, where: str) -> "QuantOptions | None":
        """The options a manifest recorded (:meth:`to_json`), checked like user input."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise SpecError(f"{where}: quant must be an object, not {data!r}")
        return cls.build(data.get("scheme"), data.get("group_size"), data.get("embeddings", False), data.get("audio", False))

    @classmethod
    def build(cls, quant=None, group_size=None, quant_embeddings=False, quant_audio=False) -> "QuantOptions | None":
        """Checks values from Python callers or the CLI; None when nothing is quantized."""
        if quant is None:
            given = [n for n, v in (("group_size", group_size), ("quant_embeddings", quant_embeddings),
                                    ("quant_audio", quant_audio)) if v not in (None, False)]
            if given:
                raise SpecError(f"{given[0]} needs quant='int4' or 'int8' (--quant)")
            return None
        if not isinstance(quant, str) or quant not in SCHEMES:
            raise SpecError(f"quant: {quant!r} is not a supported scheme (choose {' or '.join(SCHEMES)})")
        if group_size is None:
            group_size = DEFAULT_GROUP_SIZE
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size not in GROUP_SIZES:
            raise SpecError(f"group_size: {group_size!r} is not supported (choose {', '.join(map(str, GROUP_SIZES))})")
        for name, v in (("quant_embeddings", quant_embeddings), ("quant_audio", quant_audio)):
            if not isinstance(v, bool):
                raise SpecError(f"{name}: {v!r} must be true or false")
        return cls(quant, group_size, quant_embeddings, quant_audio)


def module_of(weight_name: str) -> str:
    """``a.b.weight`` -> ``a.b``: compressed-tensors names modules, not parameters."""
    return weight_name.removesuffix(".weight")


def quantized(tp: TensorPlan, opts: QuantOptions) -> TensorPlan:
    """The same tensor, written as packed words, scales and shape under the library's names."""
    module = module_of(tp.name)
    q = Quantization(opts.bits, opts.group_size, f"{module}.weight_scale", f"{module}.weight_shape", tp.name)
    return TensorPlan(f"{module}.weight_packed", tp.source, tp.op, q)


def quantization_config(opts: QuantOptions, ignore: Iterable[str], extra_targets: Iterable[str] = ()) -> dict:
    """The ``quantization_config`` of config.json. Every Linear module is a target unless
    ``ignore`` names it; ``extra_targets`` adds modules by exact name (embeddings)."""
    weights = {
        "num_bits": opts.bits,
        "type": "int",
        "symmetric": True,
        "group_size": opts.group_size,
        "strategy": "group",
        "dynamic": False,
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear", *extra_targets],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
        },
        "ignore": list(dict.fromkeys(ignore)),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }
