"""`gslice info`: what a checkpoint holds, from its config and shard headers (no weights read)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict

from . import engine, gemma3n, runtimes
from .sources import Source
from .spec import SliceSpec


def describe(source: Source) -> dict:
    config = gemma3n.read_config(source.path)
    arch = gemma3n.architecture(config, str(source.path / "config.json"))
    ck = engine.inspect(source.path)
    gemma3n.check_source(config, arch, ck, gemma3n.resolve(arch, SliceSpec()))  # what it says must be true
    shapes = {n: t.shape for n, t in ck.tensors.items()}
    return {
        "source": source.label,
        "model_type": arch.model_type,
        "architectures": config.get("architectures", []),
        "layers": arch.num_layers,
        "layer_types": list(arch.layer_types),
        "layer_type_counts": dict(Counter(arch.layer_types)),
        "full_attention_layers": [i for i, t in enumerate(arch.layer_types) if t == "full_attention"],
        "ffn_widths": list(arch.ffn_widths),
        "kv_sharing": {
            "num_kv_shared_layers": arch.num_kv_shared,
            "first_shared": arch.first_shared,
            "producers": arch.producers if arch.num_kv_shared else {},
        },
        "towers": {
            "vision": _tower(ck, gemma3n.VISION_PREFIXES, None),
            "audio": _tower(ck, gemma3n.AUDIO_PREFIXES, arch.audio_blocks),
        },
        "params": asdict(gemma3n.count_params(shapes, arch.prefix)),
        "runtimes": runtimes.compatibility(arch).to_dict(),
        "tensors": len(ck.tensors),
        "shards": len(ck.shards),
        "bytes": ck.total_bytes,
    }


def _tower(ck: engine.CheckpointInfo, prefixes: tuple[str, ...], blocks: int | None) -> dict:
    members = [t for n, t in ck.tensors.items() if n.startswith(prefixes)]
    return {
        "present": bool(members),
        "params": sum(math.prod(t.shape) for t in members),
        "bytes": sum(t.nbytes for t in members),
        "blocks": blocks if members else None,
    }
