"""Synthetic Gemma 3n E4B checkpoints for the benchmarks, written at the speed of the disk.

The tensor names, shapes and dtypes are those of the published E4B checkpoints
(``gslice/data/gemma-3n-E4B.tensors.json``: 1,676 BF16 tensors, 15.70 GB). Sizes:

* ``full``:  the published shapes exactly (15.7 GB).
* ``mid``:   every dimension >= 128 divided by 4 (hidden 512, FFN 4096, PLE 64 per layer,
             vocab 65,600 / 65,536): same names, same 35 layers, ~1 GB.
* ``small``: the same divided by 16 (hidden 128, FFN 1024): ~62 MB, for smoke tests.

``llama_cpp=True`` keeps the per-layer input width at the published 256 below full size
(``embed_tokens_per_layer`` [V, 35 x 256], the per-layer gates, projections and norm), the one
scaled dimension llama.cpp's Gemma 3n fixes in code (``n_embd_altup``): a checkpoint whose GGUF
llama.cpp can run (``mid``: ~1.9 GB), for the evaluation benchmark.

The values are valid, finite bf16 (normal, sigma 0.02, rounded to nearest even). One random
block of ``BLOCK_ELEMS`` values is generated once and every tensor is cut from it cyclically,
starting at an offset derived from its name, so generating costs a fraction of writing.
``BLOCK_ELEMS`` is odd (a prime), so rows of power-of-two lengths never repeat with the
block's period: a slicer that takes the wrong rows or columns produces different bytes.

Shards: the tensors in natural name order, cut greedily into 4 contiguous files with the
smallest cap that gives 4 (the balanced split; the 4.7 GB ``embed_tokens_per_layer`` sits
alone in shard 2). Full size: 2.50 / 4.70 / 4.63 / 3.87 GB.

    python benches/synth.py /work/bench-scratch/e4b --size full
    python benches/synth.py /work/bench-scratch/e4b-sparse --size full --sparse   # headers only
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gslice.testing import sentencepiece_model

# The package's reference data, read from the source tree (benches/ lives beside python/).
DATA = Path(__file__).resolve().parent.parent / "python" / "gslice" / "data"
REFERENCE = DATA / "gemma-3n-E4B.tensors.json"
OFFICIAL_CSV = DATA / "gemma3n-slicing-configs.csv"

# Divisor of every dimension >= 128 (smaller ones, such as laurel rank 64 or the 4x4 altup
# coefficients, stay as published).
SCALES = {"full": 1, "mid": 4, "small": 16}
SHARDS = 4
BLOCK_ELEMS = 2**25 - 39  # a prime: 64 MiB of bf16
CHUNK = 64 << 20  # bytes per write() call


# -- the layout ---------------------------------------------------------------------------


def reference_shapes() -> dict[str, tuple[int, ...]]:
    data = json.loads(REFERENCE.read_text())["tensors"]
    return {name: tuple(t["shape"]) for name, t in data.items()}


PER_LAYER_INPUT = 256  # published hidden_size_per_layer_input, fixed in llama.cpp
PER_LAYER_DIMS = (PER_LAYER_INPUT, 35 * PER_LAYER_INPUT)  # one layer's block, all 35 layers'


def scaled_shapes(size: str, llama_cpp: bool = False) -> dict[str, tuple[int, ...]]:
    k = SCALES[size]
    return {n: tuple(d if llama_cpp and "per_layer" in n and d in PER_LAYER_DIMS else _dim(d, k) for d in shape)
            for n, shape in reference_shapes().items()}


def _dim(d: int, k: int) -> int:
    return d // k if d >= 128 and d % k == 0 else d


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def split_shards(sizes: list[int], shards: int = SHARDS) -> list[int]:
    """Start index of each shard: contiguous groups, greedy under the smallest cap giving
    ``shards`` groups (a binary search on the cap)."""

    def greedy(cap: int) -> list[int]:
        starts, used = [0], 0
        for i, s in enumerate(sizes):
            if used and used + s > cap:
                starts.append(i)
                used = 0
            used += s
        return starts

    lo, hi = max(sizes), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(greedy(mid)) <= shards:
            hi = mid
        else:
            lo = mid + 1
    return greedy(lo)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return 2 * math.prod(self.shape)


def layout(size: str, llama_cpp: bool = False) -> list[list[Tensor]]:
    """The shards, each a list of tensors in file order."""
    tensors = [Tensor(n, s) for n, s in sorted(scaled_shapes(size, llama_cpp).items(), key=lambda kv: natural_key(kv[0]))]
    starts = split_shards([t.nbytes for t in tensors]) + [len(tensors)]
    return [tensors[a:b] for a, b in zip(starts, starts[1:])]


def header_bytes(tensors: list[Tensor]) -> bytes:
    """A safetensors header (JSON, padded with spaces to a multiple of 8) for tensors stored
    back to back in the given order."""
    entries: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for t in tensors:
        entries[t.name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


# -- config and side files ----------------------------------------------------------------


def config(size: str, llama_cpp: bool = False) -> dict:
    """config.json as published for google/gemma-3n-E4B-it (transformers 4.53), with the
    dimensions divided like the tensors'."""
    k = SCALES[size]
    d = lambda n: _dim(n, k)  # noqa: E731
    L = 35
    text = {
        "activation_sparsity_pattern": [0.95] * 10 + [0.0] * (L - 10),
        "altup_active_idx": 0,
        "altup_coef_clip": 120.0,
        "altup_correct_scale": True,
        "altup_lr_multiplier": 1.0,
        "altup_num_inputs": 4,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "final_logit_softcapping": 30.0,
        "head_dim": d(256),
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": d(2048),
        "hidden_size_per_layer_input": PER_LAYER_INPUT if llama_cpp else d(PER_LAYER_INPUT),
        "initializer_range": 0.02,
        "intermediate_size": [d(16384)] * L,
        "laurel_rank": 64,
        "layer_types": ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(L)],
        "max_position_embeddings": 32768,
        "model_type": "gemma3n_text",
        "num_attention_heads": 8,
        "num_hidden_layers": L,
        "num_key_value_heads": 2,
        "num_kv_shared_layers": 15,
        "query_pre_attn_scalar": d(256),
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 512,
        "torch_dtype": "bfloat16",
        "vocab_size": d(262400),
        "vocab_size_per_layer_input": d(262144),
    }
    audio = {
        "conf_attention_chunk_size": 12,
        "conf_attention_context_left": 13,
        "conf_attention_context_right": 0,
        "conf_attention_logit_cap": 50.0,
        "conf_conv_kernel_size": 5,
        "conf_num_attention_heads": 8,
        "conf_num_hidden_layers": 12,
        "conf_reduction_factor": 4,
        "conf_residual_weight": 0.5,
        "gradient_clipping": 10000000000.0,
        "hidden_size": d(1536),
        "input_feat_size": d(128),
        "model_type": "gemma3n_audio",
        "rms_norm_eps": 1e-06,
        "sscp_conv_channel_size": [d(128), 32],
        "sscp_conv_group_norm_eps": 0.001,
        "sscp_conv_kernel_size": [[3, 3], [3, 3]],
        "sscp_conv_stride_size": [[2, 2], [2, 2]],
        "torch_dtype": "bfloat16",
        "vocab_offset": d(262144) + d(128),
        "vocab_size": d(128),
    }
    vision = {
        "architecture": "mobilenetv5_300m_enc",
        "do_pooling": False,
        "hidden_size": d(2048),
        "initializer_range": 0.02,
        "label_names": ["LABEL_0", "LABEL_1"],
        "model_type": "gemma3n_vision",
        "num_classes": 2,
        "rms_norm_eps": 1e-06,
        "torch_dtype": "bfloat16",
        "vocab_offset": d(262144),
        "vocab_size": d(128),
    }
    return {
        "architectures": ["Gemma3nForConditionalGeneration"],
        "audio_config": audio,
        "audio_soft_tokens_per_image": 188,
        "audio_token_id": 262273,
        "boa_token_id": 256000,
        "boi_token_id": 255999,
        "eoa_token_id": 262272,
        "eoi_token_id": 262144,
        "eos_token_id": [1, 106],
        "image_token_id": 262145,
        "initializer_range": 0.02,
        "model_type": "gemma3n",
        "text_config": text,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.53.0.dev0",
        "vision_config": vision,
        "vision_soft_tokens_per_image": 256,
    }


def side_files(size: str) -> dict[str, bytes]:
    """Tokenizer, processor and generation files with the published names and sizes (divided
    like the tensors at smaller sizes): tokenizer.json (33.4 MB published) lists a vocabulary
    of the config's size plus filler merges. Their size matters: gslice copies them into every
    output. tokenizer.model is a real SentencePiece model, a tiny one (300 pieces; published:
    262,144 in 4.7 MB): GGUF outputs and llama.cpp's converter read it, padding the vocabulary
    to the config's size."""
    k = SCALES[size]
    vocab = _dim(262144, k)
    tokens = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"tok{i}": i for i in range(3, vocab)}}
    tokenizer = {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": tokens, "merges": []}}
    base = len(json.dumps(tokenizer))
    merge = "tok12345 tok67890"
    tokenizer["model"]["merges"] = [merge] * max(0, (33_442_553 // (k * k) - base) // (len(merge) + 4))
    js = lambda o: json.dumps(o, indent=2).encode()  # noqa: E731
    return {
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "tokenizer.model": sentencepiece_model(300),
        "tokenizer_config.json": js({"model_max_length": 1000000000000000019884624838656, "tokenizer_class": "GemmaTokenizer",
                                     "processor_class": "Gemma3nProcessor", "padding_side": "left"}),
        "special_tokens_map.json": js({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}),
        "generation_config.json": js({"bos_token_id": 2, "cache_implementation": "hybrid", "do_sample": True,
                                      "eos_token_id": [1, 106], "pad_token_id": 0, "top_k": 64, "top_p": 0.95}),
        "chat_template.jinja": b"{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                               b"{{ m['content'] }}<end_of_turn>\n{% endfor %}",
        "processor_config.json": js({"audio_seq_length": 188, "image_seq_length": 256, "processor_class": "Gemma3nProcessor"}),
        "preprocessor_config.json": js({"feature_extractor_type": "Gemma3nAudioFeatureExtractor", "feature_size": 128,
                                        "image_processor_type": "SiglipImageProcessorFast", "sampling_rate": 16000}),
    }


# -- writing ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def random_block(seed: int = 0, elems: int = BLOCK_ELEMS) -> np.ndarray:
    """``elems`` finite bf16 values (uint16 bit patterns), stored twice in a row so that any
    window of up to ``elems`` values starting inside the first copy is contiguous."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal(elems, dtype=np.float32) * np.float32(0.02)
    bits = f.view(np.uint32)
    bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return np.concatenate([bf16, bf16])


@dataclass
class SynthReport:
    path: str
    size: str
    sparse: bool
    tensors: int
    shards: list[dict]
    tensor_bytes: int
    file_bytes: int
    seconds_generate: float  # the random block
    seconds_write: float  # generating and writing, before fsync
    seconds_total: float  # including fsync

    @property
    def mb_per_s(self) -> float:
        return self.file_bytes / 1e6 / max(self.seconds_total, 1e-9)


def write_checkpoint(path: str | os.PathLike, size: str = "mid", *, sparse: bool = False, seed: int = 0,
                     sync: bool = True, block_elems: int = BLOCK_ELEMS, llama_cpp: bool = False) -> SynthReport:
    """Writes a complete checkpoint folder (shards, index, config, side files) into ``path``,
    which must not exist. ``sparse`` writes only the headers and leaves the data as holes
    (zeros): a full-layout checkpoint that costs no disk, for header and planning benchmarks.
    ``block_elems`` (odd, ideally prime) sets the period of the values; smaller is faster to
    generate (tests use 2**20 - 3). ``llama_cpp``: see the module docstring."""
    out = Path(path)
    out.mkdir(parents=True)
    started = time.perf_counter()
    block = None if sparse else random_block(seed, block_elems)
    generated = time.perf_counter() - started
    shards = layout(size, llama_cpp)
    n = len(shards)
    weight_map, reports, fds = {}, [], []
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fds.append(fd)
        header = header_bytes(tensors)
        _write_all(fd, header)
        total = len(header) + sum(t.nbytes for t in tensors)
        if sparse:
            os.ftruncate(fd, total)
        else:
            for t in tensors:
                _write_tensor(fd, block, t)
        weight_map.update({t.name: name for t in tensors})
        reports.append({"name": name, "bytes": total, "tensors": len(tensors)})
    tensor_bytes = sum(t.nbytes for s in shards for t in s)
    index = {"metadata": {"total_size": tensor_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config(size, llama_cpp), indent=2) + "\n")
    for fname, data in side_files(size).items():
        (out / fname).write_bytes(data)
    written = time.perf_counter() - started
    for fd in fds:
        if sync:
            os.fsync(fd)
        os.close(fd)
    return SynthReport(str(out), size, sparse, sum(len(s) for s in shards), reports, tensor_bytes,
                       sum(r["bytes"] for r in reports), generated, written, time.perf_counter() - started)


def _write_tensor(fd: int, block: np.ndarray, t: Tensor) -> None:
    elems = len(block) // 2
    view = memoryview(block).cast("B")
    pos = zlib.crc32(t.name.encode()) % elems * 2  # byte offset into the first copy
    period = elems * 2
    left = t.nbytes
    while left:
        n = min(left, CHUNK, period)
        _write_all(fd, view[pos : pos + n])
        left -= n
        pos = (pos + n) % period


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tensor_bytes_at(name: str, offset: int, length: int, seed: int = 0, block_elems: int = BLOCK_ELEMS) -> bytes:
    """The bytes a synthetic checkpoint holds at ``offset`` of tensor ``name`` (for spot
    checks without reading the file)."""
    view = memoryview(random_block(seed, block_elems)).cast("B")
    period = block_elems * 2
    pos = (zlib.crc32(name.encode()) % block_elems * 2 + offset) % period
    out = bytearray()
    while len(out) < length:
        n = min(length - len(out), period - pos)
        out += view[pos : pos + n]
        pos = 0
    return bytes(out)


# -- slicing specs at each size -----------------------------------------------------------


def max_shard_size(size: str) -> int:
    """gslice's default output shard size (5 GB), divided like the checkpoint's bytes, so that
    outputs have as many shards at every size (E2B: 3)."""
    return 5_000_000_000 // SCALES[size] ** 2


def e2b_spec(size: str) -> dict:
    """The official E2B config (skip layers 20-24, FFN 8192 everywhere) with the width divided
    like the checkpoint's."""
    return {"layers_to_skip": list(range(20, 25)), "ffn_dims": 8192 // SCALES[size]}


def official_presets(size: str) -> dict[str, dict]:
    """Google's 16 published configs, FFN widths divided like the checkpoint's. Widths such as
    ``2_048 * 8`` are products of integer literals, parsed without eval."""
    k = SCALES[size]
    out = {}
    with OFFICIAL_CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            widths = [_product(w) // k for w in _list_items(row["FFN Hidden Dims"])]
            skip = [int(s) for s in _list_items(row["Layers Skipped"])]
            out[row["name"]] = {"layers_to_skip": skip, "ffn_dims": widths}
    return out


def _list_items(text: str) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"not a list: {text!r}")
    return [item.strip() for item in text[1:-1].split(",") if item.strip()]


def _product(expr: str) -> int:
    factors = [f.strip().replace("_", "") for f in expr.split("*")]
    if not all(f.isdigit() for f in factors):
        raise ValueError(f"not a product of integers: {expr!r}")
    return math.prod(int(f) for f in factors)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to create (must not exist)")
    ap.add_argument("--size", choices=sorted(SCALES), default="mid")
    ap.add_argument("--sparse", action="store_true", help="headers only; tensor data left as holes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()
    r = write_checkpoint(args.out, args.size, sparse=args.sparse, seed=args.seed)
    if args.json:
        print(json.dumps({**r.__dict__, "mb_per_s": r.mb_per_s}, indent=2))
        return
    for s in r.shards:
        print(f"  {s['name']}  {s['bytes'] / 1e9:7.3f} GB  {s['tensors']:5d} tensors")
    print(f"{r.path}: {r.tensors} tensors, {r.file_bytes / 1e9:.3f} GB ({r.size}{', sparse' if r.sparse else ''}) "
          f"in {r.seconds_total:.1f} s ({r.seconds_generate:.1f} s generating, "
          f"{r.seconds_write - r.seconds_generate:.1f} s writing, the rest fsync): {r.mb_per_s:.0f} MB/s overall, "
          f"{r.file_bytes / 1e6 / max(r.seconds_total - r.seconds_generate, 1e-9):.0f} MB/s writing + fsync")


if __name__ == "__main__":
    main()
