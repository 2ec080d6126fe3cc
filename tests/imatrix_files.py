"""Importance matrix files for the tests, written with each format's own writer from known
values (llama.cpp's imatrix tool is not part of llama-cpp-python, so no real one can be
computed here): the GGUF format ``llama-imatrix`` writes by default, through the ``gguf``
package's writer, and the legacy ``.dat`` layout with ``struct``. Also what ``llama-quantize``
hands its quantizer from such a file, computed apart from gslice's reader, and the entries a
slice's quantizer needs (renumbered to the slice's layers, ffn_down cut to the slice's width)."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

# The matrices llama.cpp multiplies activations with, per layer (what llama-imatrix records).
LAYER_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "inp_gate", "proj",
                 "laurel_l", "laurel_r", "altup_router")


def entry_widths(layers: int, hidden: int, ffn: int, heads_x_dim: int, ple: int = 256, laurel: int = 64) -> dict[str, int]:
    """name -> columns of every weight of a source model llama-imatrix would record."""
    cols = {"attn_q": hidden, "attn_k": hidden, "attn_v": hidden, "attn_output": heads_x_dim, "ffn_gate": hidden,
            "ffn_up": hidden, "ffn_down": ffn, "inp_gate": hidden, "proj": ple, "laurel_l": hidden, "laurel_r": laurel,
            "altup_router": hidden}
    out = {f"blk.{i}.{w}.weight": cols[w] for i in range(layers) for w in LAYER_WEIGHTS}
    out["token_embd.weight"] = hidden  # the tied output's product
    return out


def random_entries(widths: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """name -> (summed squared activations, count): widely spread, some columns never active,
    one entry never called (count 0)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (name, n) in enumerate(sorted(widths.items())):
        count = 0 if k == 3 else int(rng.integers(1, 4000))
        sums = (np.exp(rng.normal(0, 2, n)) * max(count, 1)).astype(np.float32)
        sums[rng.random(n) < 0.05] = 0
        out[name] = (sums, count)
    return out


def write_gguf(path: Path, entries: dict[str, tuple[np.ndarray, int]], datasets=("wiki.train.raw",), chunks: int = 100,
               chunk_size: int = 512, metadata: bool = True) -> Path:
    """As llama-imatrix's save_imatrix: general.type "imatrix", the dataset list, chunk count
    and size, and per entry ``<name>.in_sum2`` (F32, [1, n]) and ``<name>.counts`` (F32, [1, 1])."""
    import gguf

    w = gguf.GGUFWriter(path, arch="imatrix")  # the writer insists on an architecture key
    w.add_type("imatrix")
    if metadata:
        w.add_array("imatrix.datasets", list(datasets))
        w.add_uint32("imatrix.chunk_count", chunks)
        w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, (sums, count) in sorted(entries.items()):
        w.add_tensor(f"{name}.in_sum2", sums.reshape(1, -1).astype(np.float32))
        w.add_tensor(f"{name}.counts", np.array([[count]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_dat(path: Path, entries: dict[str, tuple[np.ndarray, int]], dataset: str = "wiki.train.raw", chunks: int = 100) -> Path:
    """The legacy layout (save_imatrix_legacy): the count, then per entry the name, ncall, the
    value count and the values (here the sums, so that value / ncall is the GGUF file's sums /
    count), then the chunk count and the dataset name."""
    out = bytearray(struct.pack("<i", len(entries)))
    for name, (sums, count) in sorted(entries.items()):
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", count, sums.size) + sums.astype("<f4").tobytes()
    out += struct.pack("<i", chunks) + struct.pack("<i", len(dataset)) + dataset.encode()
    path.write_bytes(bytes(out))
    return path


def loaded(entries: dict[str, tuple[np.ndarray, int]], legacy: bool = False) -> dict[str, np.ndarray]:
    """What llama-quantize's load_imatrix hands the quantizer: sums / count in float32; where
    the count is 0, ones (GGUF format) or the sums themselves (legacy format)."""
    return {name: (sums / np.float32(count)).astype(np.float32) if count else (sums if legacy else np.ones_like(sums))
            for name, (sums, count) in entries.items()}


def for_slice(values: dict[str, np.ndarray], kept: Sequence[int], ffn: int | None = None) -> dict[str, np.ndarray]:
    """The entries under the slice's names: layer kept[i] becomes layer i, skipped layers'
    entries go, and ffn_down keeps the weights of its first ``ffn`` columns."""
    new = {old: i for i, old in enumerate(kept)}
    out = {}
    for name, v in values.items():
        m = re.match(r"blk\.(\d+)\.(.+)", name)
        if m is None:
            out[name] = v
            continue
        if int(m.group(1)) not in new:
            continue
        if m.group(2) == "ffn_down.weight" and ffn is not None:
            v = v[:ffn]
        out[f"blk.{new[int(m.group(1))]}.{m.group(2)}"] = v
    return out
