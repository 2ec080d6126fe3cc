"""Tiny random Gemma 3n text models that every runtime computes - transformers, llama.cpp (from
gslice's own GGUF files or from llama.cpp's converter) and mlx-lm (after ``mlx_lm.convert``) -
with a SentencePiece tokenizer, saved as the published checkpoints are. The one fixture of the
tiers that compare runtimes: GGUF output, evaluation, MLX.

Sizes: those llama.cpp's Gemma 3n fixes in code (AltUp 4, LAuReL rank 64, 256 per-layer input
values, KV sharing from layer 20 on with producers 18 and 19, activation sparsity on layers
0-9), small elsewhere (hidden 64, 2 heads of 32, FFN 128: whole GGML blocks), 25 layers of which
the last 5 share KV by default: ``gslice.testing.LLAMA_LIKE``'s text decoder. The text
vocabulary (320) is larger than the tokenizer's (300 pieces) and the per-layer embedding
table's (300 rows), as in the published checkpoints (262,400 / 262,144).

Saved as published: k/v projections and k_norm for the KV-sharing layers are added (transformers
>= 4.56 neither uses nor saves them; llama.cpp requires them, mlx-lm builds them) as zeros, which
a runtime that shares correctly never reads and which make one that does (mlx-lm without a KV
cache) visibly wrong. The tokenizer is the core tier's (``gslice.testing.write_sentencepiece``:
300 pieces with byte fallback, set up as Gemma's), so any text tokenizes, gslice's sample
included.

The random weights are gentle: a random Gemma 3n with weights of order one is chaotic (its
attention is unscaled, and every norm restores unit scale), so that rounding noise of 1e-7
comes out as differences of 0.02 to 0.9 in the logits. Here q/k norms are drawn in
[0.025, 0.075], other vectors in [0.25, 0.75], matrices with standard deviation
0.5 / sqrt(fan-in), and the token embeddings 8 times larger, so that the logits spread over a
few units (standard deviation about 2) while the model stays stable. Every weight is a BF16
value, so a BF16 checkpoint holds exactly the model transformers runs in float32.
``logit_scale`` multiplies the final norm's scale: the evaluation tests use 4, which makes the
next-token distributions peaked like a trained model's (a few likely tokens) rather than flat.

Conversions shell out to the runtimes' own tools, so those helpers need llama.cpp's source
(``llama_cpp_source()``) and mlx-lm.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

from gslice.testing import LLAMA_LIKE, write_sentencepiece

VOCAB = LLAMA_LIKE.vocab  # 320: the text vocabulary (embeddings, logits)
VOCAB_PER_LAYER = LLAMA_LIKE.vocab_per_layer  # 300: the per-layer embedding table's rows, the tokenizer's pieces
NUM_LAYERS, NUM_KV_SHARED = LLAMA_LIKE.num_layers, LLAMA_LIKE.num_kv_shared  # 25, 5
TEXT = "the quick brown fox\none two three"


def config(num_layers: int = NUM_LAYERS, num_kv_shared: int = NUM_KV_SHARED, ffn: int = 128) -> Gemma3nTextConfig:
    cfg = Gemma3nTextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB_PER_LAYER, hidden_size=64, intermediate_size=ffn,
        num_hidden_layers=num_layers, num_kv_shared_layers=num_kv_shared, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, hidden_size_per_layer_input=256, laurel_rank=64, altup_num_inputs=4,
        sliding_window=8, max_position_embeddings=1024,
        layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(num_layers)],
        activation_sparsity_pattern=[0.95 if i < 10 else 0.0 for i in range(num_layers)],
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    cfg.architectures = ["Gemma3nForCausalLM"]
    return cfg


@torch.no_grad()
def build(num_layers: int = NUM_LAYERS, num_kv_shared: int = NUM_KV_SHARED, ffn: int = 128, seed: int = 0,
          logit_scale: float = 1.0) -> Gemma3nForCausalLM:
    """A random model in float32 whose every weight is a BF16 value (see the module docstring)."""
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(config(num_layers, num_kv_shared, ffn))
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim == 1:
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.25)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(0.1)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 / math.sqrt(math.prod(p.shape[1:])))
        if name.endswith("embed_tokens.weight"):
            p.mul_(8.0)
        p.copy_(p.to(torch.bfloat16).to(torch.float32))
    model.model.norm.weight.mul_(logit_scale)
    return model.to(torch.float32).eval()


def save(model: Gemma3nForCausalLM, path: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The model as a published-style checkpoint in ``dtype`` (BF16 as published; float32 to run
    it in transformers exactly as it is in memory) with the tokenizer (see the module docstring)."""
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)
    weights = load_file(path / "model.safetensors")
    cfg = model.config
    for i in range(cfg.num_hidden_layers - cfg.num_kv_shared_layers, cfg.num_hidden_layers):
        for part in ("k_proj", "v_proj", "k_norm"):
            like = weights[f"model.layers.0.self_attn.{part}.weight"]
            weights.setdefault(f"model.layers.{i}.self_attn.{part}.weight", torch.zeros_like(like))
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    assert write_sentencepiece(path, VOCAB_PER_LAYER) == VOCAB_PER_LAYER
    return path


def perturbed(model: Gemma3nForCausalLM, layers: range, factor: float, seed: int = 7) -> Gemma3nForCausalLM:
    """A copy of the model with the FFN gate/up weights of ``layers`` perturbed by ``factor``
    times their scale: a stand-in for a slice of known worse quality (evaluation tests)."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layers:
            for lin in (other.model.layers[i].mlp.gate_proj, other.model.layers[i].mlp.up_proj):
                lin.weight.add_(torch.randn(lin.weight.shape, generator=gen) * factor / math.sqrt(lin.weight.shape[1]))
    return other


# -- transformers runs ----------------------------------------------------------------------


def prompt_ids(src: Path) -> list[int]:
    """TEXT tokenized by the source's SentencePiece model, with BOS (id 2)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return [2, *sp.encode(TEXT)]


@torch.no_grad()
def logits(model: nn.Module, ids: Sequence[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0].float().numpy()


@torch.no_grad()
def greedy(model: nn.Module, ids: Sequence[int], new_tokens: int) -> list[int]:
    out = model.generate(input_ids=torch.tensor([list(ids)]), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, use_cache=True)
    return out[0].tolist()


# -- the runtimes' own conversions -----------------------------------------------------------


def llama_cpp_source() -> Path:
    """The folder holding convert_hf_to_gguf.py (with its conversion package and gguf-py) of the
    llama.cpp that llama-cpp-python 0.3.36 vendors: `.ci/llama-cpp-source` prepares it and
    `.ci/run` exports it as GSLICE_LLAMA_CPP_SOURCE."""
    path = os.environ.get("GSLICE_LLAMA_CPP_SOURCE")
    if not path or not (Path(path) / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError("set GSLICE_LLAMA_CPP_SOURCE to the folder `.ci/llama-cpp-source` prints")
    return Path(path)


def convert_to_gguf(pairs: list[tuple[Path, Path]], outtype: str = "f32") -> None:
    """llama.cpp's convert_hf_to_gguf.py (from the llama-cpp-python sdist, with its own gguf-py)
    on each (HF folder, GGUF path), all in one Python process: the script's imports (torch,
    transformers) cost more than converting a tiny model."""
    script = llama_cpp_source() / "convert_hf_to_gguf.py"
    driver = (
        "import os, runpy, sys\n"
        "script, outtype, *rest = sys.argv[1:]\n"
        "sys.path.insert(0, os.path.dirname(script))  # as `python script` would\n"
        "for hf, out in zip(rest[::2], rest[1::2]):\n"
        "    sys.argv = [script, hf, '--outfile', out, '--outtype', outtype]\n"
        "    runpy.run_path(script, run_name='__main__')\n"
    )
    args = [str(x) for pair in pairs for x in pair]
    done = subprocess.run(
        [sys.executable, "-c", driver, str(script), outtype, *args], capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"},  # its own gguf-py, not an installed one
    )
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-3000:]}")


def convert_to_mlx(hf_folder: Path, out: Path, quantize: bool = False) -> Path:
    """``mlx_lm.convert`` (float32 weights as they are, or quantized with its defaults).

    mlx-lm 0.32.2 knows Gemma 3n only as the multimodal ``gemma3n`` model (``gemma3n_text`` is
    "not supported"), whose sanitize drops the towers. So the text-only checkpoint is handed to
    it in the multimodal layout: config nested under ``text_config``, tensors under
    ``model.language_model.``, no towers; and the RoPE bases under the names the published
    configs use, which mlx-lm requires (transformers 5 writes ``rope_parameters`` instead)."""
    import shutil
    import tempfile

    from mlx_lm import convert

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "multimodal-layout"
        staged.mkdir()
        for f in hf_folder.iterdir():
            if f.name not in ("config.json", "model.safetensors"):
                shutil.copy(f, staged / f.name)
        text = json.loads((hf_folder / "config.json").read_text())
        # transformers 5 saves rope_parameters; mlx-lm 0.32.2 reads the published configs' keys
        rope = text.get("rope_parameters") or {}
        text.setdefault("rope_theta", rope["full_attention"]["rope_theta"])
        text.setdefault("rope_local_base_freq", rope["sliding_attention"]["rope_theta"])
        config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"], "text_config": text}
        (staged / "config.json").write_text(json.dumps(config))
        tensors = {"model.language_model." + k.removeprefix("model."): v for k, v in load_file(hf_folder / "model.safetensors").items()}
        save_file(tensors, staged / "model.safetensors", metadata={"format": "pt"})
        convert(str(staged), mlx_path=str(out), quantize=quantize, dtype="float32")
    return out
