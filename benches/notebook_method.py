"""The published MatFormer Lab notebook's slicing method, re-implemented for comparison.

Its algorithm (not its code): for each source shard, load every tensor of the shard whole
into RAM (``safetensors.torch.load_file``); for each tensor, drop it if its layer is skipped,
rename its layer index, narrow the MLP weights with torch indexing (``gate/up_proj[:F]``,
``down_proj[:, :F]``), select the per-layer-embedding column blocks and projection row blocks
of kept layers (``torch.cat``); collect the results in a dict until it holds about 4 GB,
then ``save_file`` it as one output shard; finally write the index and config.json.

Run it with a Python that has torch (the interop venv), not gslice's:

    ~/.cache/gslice/interop-venv/bin/python benches/notebook_method.py SRC OUT \
        --layers-to-skip 20-24 --ffn-dim 8192

The output's tensors are the same as gslice's (benches/full.py checks that); only the shard
boundaries differ. Like the notebook, config.json keeps the source's ``layer_types`` and
``activation_sparsity_pattern`` lists (its known defect: see docs/design.md); that does not matter
for timing or for the tensor comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHARD_BYTES = 4_000_000_000  # the notebook's output shard size ("4GB")
LAYER = re.compile(r"^(model\.language_model\.layers\.)(\d+)\.(.+)$")


def slice_checkpoint(src: Path, out: Path, layers_to_skip: list[int], ffn_dim: int, shard_bytes: int = SHARD_BYTES) -> dict:
    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    L, P = text["num_hidden_layers"], text["hidden_size_per_layer_input"]
    kept = [i for i in range(L) if i not in set(layers_to_skip)]
    new_index = {old: new for new, old in enumerate(kept)}
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))

    out.mkdir(parents=True)
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0
    written: list[tuple[str, list[str]]] = []

    def flush() -> None:
        nonlocal pending, pending_bytes
        name = f"model-{len(written) + 1:05d}.safetensors"
        save_file(pending, str(out / name), metadata={"format": "pt"})
        written.append((name, list(pending)))
        pending, pending_bytes = {}, 0

    for shard in shard_files:
        tensors = load_file(str(src / shard))  # the whole shard, in RAM
        for name, t in tensors.items():
            new_name, new_t = _slice_tensor(name, t, new_index, kept, P, ffn_dim)
            if new_name is None:
                continue
            pending[new_name] = new_t
            pending_bytes += new_t.numel() * new_t.element_size()
            if pending_bytes >= shard_bytes:
                flush()
    if pending:
        flush()

    n = len(written)
    weight_map, total = {}, 0
    for k, (name, names) in enumerate(written):
        final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        (out / name).rename(out / final)
        weight_map.update({t: final for t in names})
    for f in out.glob("*.safetensors"):
        total += f.stat().st_size
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
    )
    text["num_hidden_layers"] = len(kept)
    text["intermediate_size"] = [ffn_dim] * len(kept)
    first_shared = L - text["num_kv_shared_layers"]
    text["num_kv_shared_layers"] = sum(1 for i in kept if i >= first_shared)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)
    return {"shards": n, "bytes": total}


def _slice_tensor(name: str, t: torch.Tensor, new_index: dict[int, int], kept: list[int], P: int, ffn_dim: int):
    if m := LAYER.match(name):
        layer, rest = int(m.group(2)), m.group(3)
        if layer not in new_index:
            return None, None
        name = f"{m.group(1)}{new_index[layer]}.{rest}"
        if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            t = t[:ffn_dim, :].contiguous()
        elif rest == "mlp.down_proj.weight":
            t = t[:, :ffn_dim].contiguous()
        return name, t
    if name.endswith("embed_tokens_per_layer.weight"):
        return name, torch.cat([t[:, i * P : (i + 1) * P] for i in kept], dim=1)
    if name.endswith("per_layer_model_projection.weight"):
        return name, torch.cat([t[i * P : (i + 1) * P, :] for i in kept], dim=0)
    return name, t


def parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="The MatFormer Lab notebook's slicing method (whole tensors in RAM).")
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers-to-skip", default="20-24")
    ap.add_argument("--ffn-dim", type=int, required=True)
    ap.add_argument("--shard-bytes", type=int, default=SHARD_BYTES)
    args = ap.parse_args()
    started = time.perf_counter()
    r = slice_checkpoint(args.src, args.out, parse_ranges(args.layers_to_skip), args.ffn_dim, args.shard_bytes)
    print(json.dumps({**r, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
