"""A random tiny Gemma 3n built by transformers itself, and the same model sliced at module level.

This is the oracle of the interop tier. Nothing here imports gslice: the module-level slice is
derived from the model's own modules (which layer is which attention type, which layers reuse
another's keys and values), so comparing it with what transformers loads from gslice's output
checks gslice's rules against transformers rather than against themselves.

Reusable by any interop test (slicing, quantization, presets)::

    from interop.tiny_gemma3n import build_tiny_model, save, module_slice, load, logits, greedy

    model = build_tiny_model()                      # E4B-like: 20 layers, the last 10 reuse K/V
    src = save(model, tmp_path / "src")             # save_pretrained, safetensors, fp32
    oracle = module_slice(model, layers_to_skip=range(10, 15), widths=32)
    loaded = load(gslice_output_dir)
    assert max_abs_diff(logits(loaded), logits(oracle)) <= 1e-5

Shapes mirror the published checkpoints at a tiny scale (Gemma 3n E4B: 35 layers, the last 15
KV-shared, FFN 16384, MatFormer-trained at 8192 and 16384):

* text: ``num_layers`` decoder layers (default 20), the last ``num_kv_shared`` (default 10) reuse
  K/V; every fifth layer is full attention, the others sliding (window 4, so that 12-token
  prompts tell the two apart); FFN width 64 (the "trained" widths here are 32 and 64); AltUp
  with 4 streams, LAuReL rank 4, per-layer embeddings of 8 per layer; activation sparsity 0.95
  on the first 10 layers, as in the published configs;
* audio: the Conformer encoder with 12 blocks (as published), hidden size 32;
* vision: timm's ``test_efficientnet`` behind ``TimmWrapperModel``. The real tower is
  ``mobilenetv5_300m_enc``; its fusion adapter has a fixed 2048-channel output, so even at
  width multiplier 0.1 it keeps 12.4M parameters and takes seconds to build. test_efficientnet
  is built by the same timm EfficientNet block builder, has 0.36M parameters and its features
  (256 channels, 2x2 for a 64x64 image) fit ``vision_soft_tokens_per_image=4``, so the image
  path of ``Gemma3nModel`` runs too.

Token ids follow the published layout scaled down: text ids 0..255 (``vocab_size_per_layer_input``),
8 vision ids from 256 and 8 audio ids from 264 (``vocab_size`` 272).

Every parameter is drawn at random (seeded), including the ones transformers initialises to
zero (``altup.correct_output_scale`` would otherwise silence the per-layer-embedding path and
make a wrong PLE block invisible in the logits).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3nConfig,
    Gemma3nForCausalLM,
    Gemma3nForConditionalGeneration,
)

TEXT_VOCAB = 256
VISION_OFFSET, VISION_VOCAB = 256, 8
AUDIO_OFFSET, AUDIO_VOCAB = 264, 8
VOCAB = AUDIO_OFFSET + AUDIO_VOCAB
IMAGE_TOKEN, AUDIO_TOKEN = VISION_OFFSET + 1, AUDIO_OFFSET + 1
VISION_TOKENS, AUDIO_TOKENS = 4, 8
IMAGE_SIZE = 64  # pixels: test_efficientnet gives 2x2 features = VISION_TOKENS
AUDIO_FEATURES = 16  # mel bins
AUDIO_FRAMES = 128  # /4 by the subsampling convolutions, /4 by the reduction: 8 = AUDIO_TOKENS

# A fixed 12-token prompt of text ids (longer than the sliding window of 4).
PROMPT = (2, 17, 33, 5, 99, 120, 7, 64, 201, 11, 45, 3)


def tiny_config(
    num_layers: int = 20,
    num_kv_shared: int = 10,
    ffn_width: int = 64,
    audio_blocks: int = 12,
) -> Gemma3nConfig:
    """A Gemma3nConfig with the published structure and tiny widths (see the module docstring)."""
    text = dict(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=TEXT_VOCAB,
        hidden_size=32,
        intermediate_size=ffn_width,
        num_hidden_layers=num_layers,
        num_kv_shared_layers=num_kv_shared,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_size_per_layer_input=8,
        laurel_rank=4,
        altup_num_inputs=4,
        sliding_window=4,
        max_position_embeddings=256,
        # the published configs write both lists out in full; so do we
        layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(num_layers)],
        activation_sparsity_pattern=[0.95 if i < 10 else 0.0 for i in range(num_layers)],
    )
    audio = dict(
        input_feat_size=AUDIO_FEATURES,
        hidden_size=32,
        conf_num_attention_heads=4,
        conf_num_hidden_layers=audio_blocks,
        sscp_conv_channel_size=[16, 8],
        conf_conv_kernel_size=3,
        conf_attention_chunk_size=4,
        conf_attention_context_left=5,
        vocab_size=AUDIO_VOCAB,
        vocab_offset=AUDIO_OFFSET,
    )
    vision = dict(
        architecture="test_efficientnet",
        hidden_size=256,
        vocab_size=VISION_VOCAB,
        vocab_offset=VISION_OFFSET,
        do_pooling=False,
    )
    return Gemma3nConfig(
        text_config=text,
        audio_config=audio,
        vision_config=vision,
        audio_soft_tokens_per_image=AUDIO_TOKENS,
        vision_soft_tokens_per_image=VISION_TOKENS,
        boi_token_id=250,
        eoi_token_id=VISION_OFFSET,
        image_token_id=IMAGE_TOKEN,
        boa_token_id=251,
        eoa_token_id=AUDIO_OFFSET,
        audio_token_id=AUDIO_TOKEN,
    )


def build_tiny_model(
    num_layers: int = 20,
    num_kv_shared: int = 10,
    ffn_width: int = 64,
    audio_blocks: int = 12,
    seed: int = 0,
) -> Gemma3nForConditionalGeneration:
    """A random Gemma3nForConditionalGeneration in fp32, eval mode, every weight drawn from ``seed``.

    E4B-like by default; ``build_tiny_model(15, 5, ffn_width=32)`` is E2B-like (E2B: 30 layers,
    10 KV-shared, FFN 8192)."""
    torch.manual_seed(seed)
    model = Gemma3nForConditionalGeneration(tiny_config(num_layers, num_kv_shared, ffn_width, audio_blocks))
    randomize(model, seed)
    return model.to(torch.float32).eval()


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Draws every parameter so that activations stay of order one: vectors (norm scales, biases,
    AltUp output scales) uniform in [0.5, 1.5], matrices and kernels normal with std 1/sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        if p.ndim == 1:
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        else:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def save(model: nn.Module, path: str | Path) -> Path:
    """``save_pretrained`` as safetensors (one shard; the weights are small)."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def load(path: str | Path, cls=Gemma3nForConditionalGeneration) -> nn.Module:
    """``cls.from_pretrained(path)`` in fp32, eval mode, weights moved to fresh memory."""
    return load_with_info(path, cls)[0]


def load_with_info(path: str | Path, cls=Gemma3nForConditionalGeneration) -> tuple[nn.Module, dict]:
    """Like :func:`load`, also returning transformers' loading info (missing/unexpected keys)."""
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    _own_memory(model)
    return model.eval(), info


@torch.no_grad()
def _own_memory(model: nn.Module) -> None:
    # from_pretrained leaves weights in the memory-mapped file, at whatever offset the writer
    # gave them (safetensors only aligns to 8 bytes). oneDNN's convolutions take a different
    # path for such addresses and round differently: 2e-6 on the vision tower's output here,
    # 2.6e-4 in the logits of an image prompt. The same values in freshly allocated memory
    # compute the same thing whichever file they came from, so comparisons measure the model.
    for p in model.parameters():
        p.data = p.data.clone()
    for m in model.modules():
        for name, b in list(m.named_buffers(recurse=False)):
            setattr(m, name, b.clone())


def text_model(model: nn.Module) -> nn.Module:
    """The Gemma3nTextModel inside a multimodal or a causal-LM model."""
    if isinstance(model, Gemma3nForConditionalGeneration):
        return model.model.language_model
    if isinstance(model, Gemma3nForCausalLM):
        return model.model
    raise TypeError(f"not a Gemma 3n model: {type(model).__name__}")


# -- module-level slicing -------------------------------------------------------------------


def module_slice(
    model: nn.Module,
    layers_to_skip: Iterable[int] = (),
    widths: int | Sequence[int] | None = None,
    audio_blocks_to_skip: Iterable[int] = (),
) -> nn.Module:
    """A deep copy of ``model`` with decoder layers and audio blocks removed and FFNs narrowed,
    done on the modules (never through a checkpoint), then the config made to describe them.

    ``widths``: None keeps each layer's width, an int narrows every kept layer, a sequence
    gives one width per kept layer. MatFormer nests the narrow FFN as the leading slice, so
    gate/up_proj keep their leading output rows and down_proj its leading input columns.
    """
    model = copy.deepcopy(model)
    lm = text_model(model)
    skip = set(layers_to_skip)
    kept = [i for i in range(len(lm.layers)) if i not in skip]
    layers = [lm.layers[i] for i in kept]
    if widths is None:
        widths = [layer.mlp.intermediate_size for layer in layers]
    elif isinstance(widths, int):
        widths = [widths] * len(layers)
    assert len(widths) == len(layers), f"{len(widths)} widths for {len(layers)} kept layers"

    _select_ple_blocks(lm, kept)
    for new, (layer, width) in enumerate(zip(layers, widths)):
        _narrow_mlp(layer.mlp, width)
        # The cache is indexed by position in the new stack; the layer's attention type and
        # its role in KV sharing are properties of the trained layer and stay as they were.
        layer.layer_idx = new
        layer.self_attn.layer_idx = new
    lm.layers = nn.ModuleList(layers)
    _describe_layers(lm.config, layers)

    blocks = set(audio_blocks_to_skip)
    if blocks:
        tower = model.model.audio_tower
        tower.conformer = nn.ModuleList(b for i, b in enumerate(tower.conformer) if i not in blocks)
        tower.config.conf_num_hidden_layers = len(tower.conformer)
        assert model.config.audio_config.conf_num_hidden_layers == len(tower.conformer)
    return model


def _select_ple_blocks(lm: nn.Module, kept: list[int]) -> None:
    # Layer i's per-layer embedding is columns [i*P, (i+1)*P) of the table and rows
    # [i*P, (i+1)*P) of the projection: the forward pass reshapes them to [..., L, P].
    P = lm.hidden_size_per_layer_input
    index = torch.cat([torch.arange(i * P, (i + 1) * P) for i in kept])
    table, proj = lm.embed_tokens_per_layer, lm.per_layer_model_projection
    table.weight = nn.Parameter(table.weight[:, index].clone())
    table.embedding_dim = len(index)
    proj.weight = nn.Parameter(proj.weight[index, :].clone())
    proj.out_features = len(index)


def _narrow_mlp(mlp: nn.Module, width: int) -> None:
    assert width <= mlp.intermediate_size
    for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight = nn.Parameter(lin.weight[:width, :].clone())
        lin.out_features = width
    mlp.down_proj.weight = nn.Parameter(mlp.down_proj.weight[:, :width].clone())
    mlp.down_proj.in_features = width
    mlp.intermediate_size = width


def _describe_layers(cfg, layers: list[nn.Module]) -> None:
    """Sets the text config from what the kept modules are, then checks that transformers'
    reading of that config (KV sharing modes, its own validation) agrees with the modules."""
    cfg.num_hidden_layers = len(layers)
    cfg.layer_types = [layer.self_attn.layer_type for layer in layers]
    cfg.intermediate_size = [layer.mlp.intermediate_size for layer in layers]
    cfg.activation_sparsity_pattern = [layer.mlp.activation_sparsity for layer in layers]
    cfg.num_kv_shared_layers = sum(layer.self_attn.is_kv_shared_layer for layer in layers)
    if cfg.num_kv_shared_layers == 0:
        # No kept layer reads the producers' stored keys/values (every KV-sharing layer was
        # skipped): transformers gives such a config no producers, and storing them into the
        # per-forward dict changed no output.
        for layer in layers:
            layer.self_attn.store_full_length_kv = False
    roles = ["reuse" if a.is_kv_shared_layer else "store" if a.store_full_length_kv else None for a in (layer.self_attn for layer in layers)]
    assert cfg.kv_sharing_modes == roles, f"config KV sharing {cfg.kv_sharing_modes} != modules {roles}"
    cfg.validate()


# -- running ------------------------------------------------------------------------------


def prompt(batch: int = 1) -> torch.Tensor:
    return torch.tensor([PROMPT] * batch)


@torch.no_grad()
def logits(model: nn.Module, ids: torch.Tensor | None = None, **inputs) -> torch.Tensor:
    ids = prompt() if ids is None else ids
    return model(input_ids=ids, use_cache=False, **inputs).logits.float()


@torch.no_grad()
def greedy(model: nn.Module, ids: torch.Tensor | None = None, new_tokens: int = 6) -> torch.Tensor:
    """Greedy decoding of exactly ``new_tokens`` tokens (EOS cannot stop it early), using the
    KV cache: this exercises the cache layout (sliding windows, shared K/V) that logits alone do not."""
    ids = prompt() if ids is None else ids
    return model.generate(
        input_ids=ids,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        use_cache=True,
    )


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a - b).abs().max())


def audio_inputs(seed: int = 1, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random log-mel features [batch, frames, mel bins] and an all-valid mask (True = valid)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, AUDIO_FRAMES, AUDIO_FEATURES, generator=gen)
    return features, torch.ones(batch, AUDIO_FRAMES, dtype=torch.bool)


def image_inputs(seed: int = 2, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


def audio_prompt() -> torch.Tensor:
    """Text around AUDIO_TOKENS audio soft-token placeholders, as the processor lays them out."""
    return torch.tensor([[2, 17, 251, *([AUDIO_TOKEN] * AUDIO_TOKENS), AUDIO_OFFSET, 33, 5, 99]])


def image_prompt() -> torch.Tensor:
    return torch.tensor([[2, 17, 250, *([IMAGE_TOKEN] * VISION_TOKENS), VISION_OFFSET, 33, 5, 99]])


__all__ = [
    "AutoModelForCausalLM",
    "Gemma3nForCausalLM",
    "Gemma3nForConditionalGeneration",
    "build_tiny_model",
    "tiny_config",
    "randomize",
    "save",
    "load",
    "load_with_info",
    "text_model",
    "module_slice",
    "prompt",
    "logits",
    "greedy",
    "max_abs_diff",
    "audio_inputs",
    "image_inputs",
    "audio_prompt",
    "image_prompt",
]
