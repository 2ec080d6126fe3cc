"""Tiny random Gemma 3n text models that every runtime loads - transformers, llama.cpp (after its
own convert_hf_to_gguf.py) and mlx-lm (after ``mlx_lm.convert``) - with a tiny SentencePiece
tokenizer. Shared by the tiers that compare runtimes (evaluation, GGUF output).

llama.cpp's Gemma 3n loader fixes values that ``tiny_gemma3n.tiny_config`` scales down, so
these models keep them: AltUp 4 inputs, LAuReL rank 64, per-layer input width 256, KV sharing
from layer 20 (22 layers, the last 2 sharing; producers 18 sliding and 19 full attention),
activation sparsity on exactly layers 0-9. Also:

* the KV-sharing layers get k/v projections and norms in the checkpoint: transformers >= 4.56
  neither uses nor saves them, but llama.cpp requires them and mlx-lm builds them (zeros are
  fine for a runtime that shares correctly: they are never read; the zeros make a runtime that
  does read them - mlx-lm without a KV cache - visibly wrong);
* q/k norm scales are drawn near 0.1, not 1: Gemma 3n's attention is unscaled, and random
  models with unit-scale norms are chaotic (tiny numeric differences between runtimes flip
  the argmax);
* the final norm's scale is multiplied by LOGIT_SCALE, so that next-token distributions are
  peaked like a trained model's (a few likely tokens) rather than nearly uniform;
* the tokenizer is a 256-piece SentencePiece BPE model trained here on gslice's sample text,
  with identity normalization (so "\\n" stays a piece) and no dummy prefix, which
  transformers' GemmaTokenizer reproduces exactly; pad 0, eos 1, bos 2, unk 3.

Conversions shell out to the runtimes' own tools, so these helpers need llama.cpp's source
(``llama_cpp_source()``) and mlx-lm.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

from .tiny_gemma3n import randomize

VOCAB = 256
LOGIT_SCALE = 4.0  # on the final norm: next-token distributions peaked like a trained model's
NUM_LAYERS, NUM_KV_SHARED = 22, 2


def text_config(num_layers: int = NUM_LAYERS, num_kv_shared: int = NUM_KV_SHARED, ffn_width: int = 128) -> Gemma3nTextConfig:
    return Gemma3nTextConfig(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=VOCAB,
        hidden_size=64,
        intermediate_size=ffn_width,
        num_hidden_layers=num_layers,
        num_kv_shared_layers=num_kv_shared,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        hidden_size_per_layer_input=256,
        laurel_rank=64,
        altup_num_inputs=4,
        sliding_window=8,
        max_position_embeddings=1024,
        layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(num_layers)],
        activation_sparsity_pattern=[0.95 if i < 10 else 0.0 for i in range(num_layers)],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def build_text_model(seed: int = 0, **config) -> Gemma3nForCausalLM:
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(text_config(**config))
    randomize(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(0.1)
        model.model.norm.weight.mul_(LOGIT_SCALE)
    return model.to(torch.float32).eval()


def train_tokenizer(text: str, folder: Path) -> Path:
    """Writes tokenizer.model and a tokenizer_config.json naming GemmaTokenizer into ``folder``."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=VOCAB, model_type="bpe",
        character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, user_defined_symbols=["\n"], byte_fallback=False,
        minloglevel=2, num_threads=1,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def save_text_model(model: Gemma3nForCausalLM, folder: Path, tokenizer_text: str) -> Path:
    """save_pretrained (fp32 safetensors), k/v projections and norms of the KV-sharing layers
    added as zeros, and the tiny tokenizer."""
    model.save_pretrained(folder, safe_serialization=True)
    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    cfg = model.config
    first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
    kv = cfg.num_key_value_heads * cfg.head_dim
    for i in range(first_shared, cfg.num_hidden_layers):
        prefix = f"model.layers.{i}.self_attn."
        for proj in ("k_proj", "v_proj"):
            tensors.setdefault(prefix + f"{proj}.weight", torch.zeros(kv, cfg.hidden_size))
        tensors.setdefault(prefix + "k_norm.weight", torch.zeros(cfg.head_dim))
    save_file(tensors, shard, metadata={"format": "pt"})
    train_tokenizer(tokenizer_text, folder)
    return folder


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


def scale_noise(model: Gemma3nForCausalLM, layers: range, factor: float, seed: int = 7) -> Gemma3nForCausalLM:
    """A 'slice' of the model with FFN weights of ``layers`` perturbed by ``factor`` x their
    std: a stand-in for a slice whose quality is known to be worse (in tests of evaluation)."""
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layers:
            for lin in (other.model.layers[i].mlp.gate_proj, other.model.layers[i].mlp.up_proj):
                lin.weight.add_(torch.randn(lin.weight.shape, generator=gen) * factor / math.sqrt(lin.weight.shape[1]))
    return other
