"""Quantized outputs against transformers + compressed-tensors (the interop tier).

* an int4 (and int8) slice of a tiny random Gemma3nForCausalLM loads through transformers'
  compressed-tensors integration on CPU, and its logits equal those of the same slice whose
  weights were quantized and dequantized in numpy (gslice.testing.reference_quantize);
* compressed-tensors' own decompression of our tensors equals the numpy reference, and its own
  quantizer (compute_dynamic_scales_and_zp, quantize, pack_to_int32) produces our bytes;
* on the full E4B architecture (built on the meta device), the modules compressed-tensors
  quantizes given our config.json are exactly the ones we wrote packed weights for.

Run with the interop venv: ``python -m pytest -m interop tests/interop``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import gslice
from gslice import gemma3n
from gslice.engine import CheckpointInfo, TensorInfo
from gslice.quantization import QuantOptions, module_of
from gslice.spec import SliceSpec
from gslice.testing import bf16_bits_to_f32, f32_to_bf16_bits, read_checkpoint, reference_quantize

pytestmark = pytest.mark.interop

LAYERS = 6
# What gemma3n.py documents as the text targets (a Gemma3nForCausalLM names them model.*).
TARGETS = re.compile(
    r"^model\.(layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|laurel\.linear_(left|right)"
    r"|per_layer_input_gate|per_layer_projection)|per_layer_model_projection"
    r"|altup_projections\.\d+|altup_unembed_projections\.\d+)\.weight$"
)
SPEC = dict(layers_to_skip=[1], ffn_dims=64)
TOKENS = [[2, 17, 301, 45, 9, 88, 120, 7, 3, 250, 64, 11], [2, 400, 5, 5, 31, 200, 1, 77, 13, 500, 42, 6]]


@pytest.fixture(scope="module")
def torch():
    import torch

    torch.manual_seed(0)
    return torch


@pytest.fixture(scope="module")
def tiny_text_model(torch, tmp_path_factory) -> Path:
    """A random Gemma3nForCausalLM at widths that are multiples of 32, saved in BF16."""
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=512,
        vocab_size_per_layer_input=512,
        hidden_size=64,
        hidden_size_per_layer_input=32,
        intermediate_size=[128] * LAYERS,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_kv_shared_layers=2,
        laurel_rank=32,
        altup_num_inputs=4,
        max_position_embeddings=256,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * (LAYERS // 3),
        activation_sparsity_pattern=[0.0] * LAYERS,
    )
    model = Gemma3nForCausalLM(config).to(torch.bfloat16)
    # transformers initializes some weights to zero or one; spread every tensor so that
    # quantization has real work everywhere.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p, dtype=torch.float32).mul(0.05).to(p.dtype))
    path = tmp_path_factory.mktemp("interop") / "src"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain(tiny_text_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "out"
    gslice.slice_model(tiny_text_model, out, **SPEC)
    return out


def numpy_quantized_model(torch, plain: Path, bits: int, dtype, names=TARGETS):
    """The BF16 slice loaded in transformers, each target weight replaced by numpy's
    quantize-dequantize (rounded to BF16 when the model runs in BF16, as compressed-tensors'
    dequantize does for a BF16 scale)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(plain, dtype=dtype)
    weights = read_checkpoint(plain)
    params = dict(model.named_parameters())
    replaced = set()
    for name, w in weights.items():
        if not (names.match(name) if hasattr(names, "match") else name in names):
            continue
        deq = reference_quantize(w, bits, 32).dequantized
        if dtype == torch.bfloat16:
            deq = bf16_bits_to_f32(f32_to_bf16_bits(deq))
        with torch.no_grad():
            params[name].copy_(torch.from_numpy(deq).to(dtype))
        replaced.add(name)
    return model, replaced


def logits(torch, model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float()


@pytest.mark.parametrize("scheme,bits", [("int4", 4), ("int8", 8)])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_logits_equal_numpy_quantize_dequantize(torch, tiny_text_model, plain, tmp_path, scheme, bits, dtype_name):
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    out = tmp_path / "q"
    report = gslice.slice_model(tiny_text_model, out, quant=scheme, group_size=32, **SPEC)
    loaded, info = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    quantized = {n for n, m in loaded.named_modules() if getattr(m, "quantization_scheme", None) is not None}
    written = {module_of(t["name"]) for t in report.quantization["tensors"]}
    assert quantized == written
    reference, replaced = numpy_quantized_model(torch, plain, bits, dtype)
    assert {module_of(n) for n in replaced} == written
    got, want = logits(torch, loaded), logits(torch, reference)
    diff = (got - want).abs().max().item()
    print(f"{scheme} {dtype_name}: max |logits diff| = {diff:.3g}, logits max {want.abs().max().item():.3g}")
    assert diff <= 1e-4
    # and quantization did change the model
    base = logits(torch, AutoModelForCausalLM.from_pretrained(plain, dtype=dtype))
    assert (got - base).abs().max().item() > 1e-3


def scheme_for(bits: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=32, dynamic=False)
    return QuantizationScheme(targets=["Linear"], weights=args, format="pack-quantized")


@pytest.mark.parametrize("bits", [4, 8])
def test_library_decompression_and_quantizer_agree(torch, tiny_text_model, plain, tmp_path, bits):
    """For every quantized tensor: compressed-tensors' PackedQuantizationCompressor.decompress
    of our packed/scale/shape tensors equals numpy's dequantization (BF16, the scale's dtype),
    and the library's own quantizer, run on the same BF16 weight, produces our exact bytes."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    from safetensors.torch import load_file

    out = tmp_path / "q"
    gslice.slice_model(tiny_text_model, out, quant=f"int{bits}", group_size=32, **SPEC)
    ours = load_file(str(out / "model.safetensors"))
    weights = read_checkpoint(plain)
    plain_t = load_file(str(plain / "model.safetensors"))
    scheme = scheme_for(bits)
    checked = 0
    for name, w in weights.items():
        if not TARGETS.match(name):
            continue
        m = name.removesuffix("weight")
        state = {k: ours[m + k] for k in ("weight_packed", "weight_scale", "weight_shape")}
        ref = reference_quantize(w, bits, 32)
        # decompression
        dense = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        assert dense.dtype == torch.bfloat16
        want = f32_to_bf16_bits(ref.dequantized)
        assert np.array_equal(dense.view(torch.int16).numpy().view(np.uint16), want), name
        unpacked = unpack_from_int32(state["weight_packed"], bits, state["weight_shape"])
        assert np.array_equal(unpacked.numpy(), ref.q), name
        # the library's quantizer: scales from the BF16 weight, q from its float32 values
        wt = plain_t[name]
        scale, zp = compute_dynamic_scales_and_zp(wt, scheme.weights, module=None)
        assert torch.equal(scale, state["weight_scale"]), name
        q = quantize(wt.float(), scale, zp, scheme.weights, dtype=torch.int8)
        assert torch.equal(pack_to_int32(q, bits), state["weight_packed"]), name
        checked += 1
    # 11 per kept layer, but transformers saves no k/v projections for the 2 KV-sharing layers;
    # the PLE projection; 3 + 3 AltUp projections
    assert checked == (LAYERS - 1) * 11 - 2 * 2 + 1 + 6


def test_quantized_embeddings_load_only_with_dequantize(torch, tiny_text_model, plain, tmp_path):
    """--quant-embeddings: transformers 5.23's default compressed path cannot initialize an
    embedding whose weight became weight_packed; CompressedTensorsConfig(dequantize=True)
    loads it, with the expected logits."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    out = tmp_path / "q"
    report = gslice.slice_model(tiny_text_model, out, quant="int4", group_size=32, quant_embeddings=True, **SPEC)
    assert "model.embed_tokens_per_layer.weight" in {t["name"] for t in report.quantization["tensors"]}
    with pytest.raises(AttributeError, match="'Gemma3nTextScaledWordEmbedding' object has no attribute 'weight'"):
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.bfloat16, quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    names = {t["name"] for t in report.quantization["tensors"]}
    reference, replaced = numpy_quantized_model(torch, plain, 4, torch.bfloat16, names=names)
    assert replaced == names
    diff = (logits(torch, loaded) - logits(torch, reference)).abs().max().item()
    print(f"int4 + embeddings, dequantize=True: max |logits diff| = {diff:.3g}")
    assert diff <= 1e-4


def test_config_targets_exactly_our_tensors_on_the_e4b_architecture(torch):
    """Full-size E4B (the published tensor list, transformers' default Gemma3nConfig) sliced to
    E2B with int4 + audio: compressed-tensors' matcher, given our quantization_config and the
    real model's modules (built on the meta device), selects exactly the modules we quantize.
    The KV-sharing layers' k_proj/v_proj exist only in the checkpoint: transformers builds no
    such modules, so it ignores those tensors as it ignores their BF16 originals."""
    from compressed_tensors.utils.match import match_named_modules
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    listing = json.loads((Path(gslice.__file__).parent / "data" / "gemma-3n-E4B.tensors.json").read_text())["tensors"]
    ck = CheckpointInfo(Path("/e4b"), (Path("/e4b/model.safetensors"),), {
        n: TensorInfo(n, t["dtype"], tuple(t["shape"]), 0, 2 * int(np.prod(t["shape"]))) for n, t in listing.items()
    })
    config = Gemma3nConfig().to_dict()
    arch = gemma3n.architecture(config)
    res = gemma3n.resolve(arch, SliceSpec(layers_to_skip=tuple(range(20, 25)), ffn_dims=8192))
    gemma3n.check_source(config, arch, ck, res)
    opts = QuantOptions("int4", 128, audio=True)
    qplan = gemma3n.plan_quantization(arch, ck, res, gemma3n.plan_tensors(arch, ck, res), opts)
    qconfig = gslice.quantization.quantization_config(opts, qplan.ignore, qplan.extra_targets)
    new_config = gemma3n.rewrite_config(config, arch, res)
    with torch.device("meta"):
        model = Gemma3nForConditionalGeneration(Gemma3nConfig.from_dict(new_config))
    group = qconfig["config_groups"]["group_0"]
    matched = {n for n, _ in match_named_modules(model, group["targets"], qconfig["ignore"])}
    ours = {module_of(t.quant.weight) for t in qplan.tensors if t.quant}
    modules = {n for n, _ in model.named_modules()}
    shared_kv = {f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(20, 30) for p in "kv"}
    assert matched == ours - shared_kv
    assert ours - modules == shared_kv
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - matched == set(qconfig["ignore"]) & modules
    # what stays unquantized in the decoder: AltUp router/coefficients, and laurel.linear_right (64 < 128)
    kinds = {re.sub(r"\.\d+\.", ".N.", n) for n in linears - matched}
    print(sorted(k for k in kinds if "audio" not in k))
    assert {k for k in kinds if k.startswith("model.language_model.")} == {
        f"model.language_model.layers.N.{s}" for s in
        ("altup.modality_router", "altup.prediction_coefs", "altup.correction_coefs", "laurel.linear_right")
    }
