"""`--format mlx` against mlx-lm itself (mlx 0.32.4 on CPU, mlx-lm 0.32.2).

* bf16 outputs of every slice kind (none, a block skip in the KV-sharing region, per-layer
  widths, a skip below that region, scattered skips inside it, an E2B-shaped source, and a
  source saved without the sharing layers' k/v): mlx-lm loads the folder as gslice writes it,
  and its logits, with its own KV cache, equal transformers' logits of the module-level slice
  (``tiny_gemma3n.module_slice``, no gslice code) within TOLERANCE; greedy tokens agree (over
  the text vocabulary: mlx-lm drops the towers' embedders and embeds their token ids with the
  text table, transformers with theirs, and a random model does generate them). mlx-lm
  computes in the weights' dtype, and in BF16 it is 1.7 away from an fp32 reference on these
  models (docs/mlx.md section 4), so the loaded model is cast to float32 and transformers is
  given the same BF16-rounded parameters in float32: what is compared is the model, not BF16
  arithmetic.
* 4- and 8-bit outputs: every quantized module's words, scales and biases are bit for bit
  ``mx.quantize`` of the BF16 weights gslice writes unquantized; the folder holds exactly the
  tensors, bytes and config that ``mlx_lm.convert -q`` writes from gslice's BF16 output, and
  mlx-lm computes the same logits from both.

Run ``pytest -s`` to see the measured differences.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx_lm import convert, load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

import gslice
from gslice.testing import read_checkpoint

from .mlx_probe import CASES, make_source, rope_fields, write_tokenizer
from .tiny_gemma3n import PROMPT, TEXT_VOCAB, VOCAB, logits, module_slice, prompt, save

# docs/mlx.md: with the KV cache the largest difference on these models is 1.7e-3 (fp32
# sources, per-layer widths), without it 2.5 and more; transformers' own fp32-vs-fp64 rounding
# reaches 1.5e-2 on the per-layer-widths case's ill-conditioned last position.
TOLERANCE = 5e-3
CONTROL_MIN = 100 * TOLERANCE  # what the unsliced model's logits must differ by

assert mx.default_device() == mx.cpu  # the affine rule checked here is the CPU kernel's


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (in-memory model with the stored BF16 values, folder): the E4B-like and E2B-like
    tiny models in the published layout (k/v on the KV-sharing layers, a tokenizer), and the
    E4B-like one as transformers >= 4.56 saves it (no k/v on the sharing layers)."""
    root = tmp_path_factory.mktemp("mlx-sources")
    out = {name: make_source(root, name, dtype=torch.bfloat16) for name in ("e4b", "e2b")}
    model, _ = out["e4b"]
    bare = save(copy.deepcopy(model).to(torch.bfloat16), root / "src-e4b-bare")
    write_tokenizer(bare, model.config.text_config.vocab_size)
    out["e4b-bare"] = (model, bare)
    return out


def mlx_logits(folder: Path, float32: bool = True) -> np.ndarray:
    model, _ = load(str(folder))
    if float32:
        model.set_dtype(mx.float32)
    return np.array(model(mx.array([PROMPT]), cache=make_prompt_cache(model)).astype(mx.float32))


def mlx_greedy(folder: Path, new_tokens: int = 6) -> list[int]:
    """Greedy tokens through mlx-lm's generate_step (its KV cache), over the text vocabulary."""
    model, _ = load(str(folder))
    model.set_dtype(mx.float32)
    steps = generate_step(mx.array(PROMPT), model, max_tokens=new_tokens,
                          sampler=lambda x: mx.argmax(x[..., :TEXT_VOCAB], axis=-1))
    return [int(t) for t, _ in steps]


@torch.no_grad()
def torch_greedy(model, new_tokens: int = 6) -> list[int]:
    """transformers' greedy tokens with its KV cache, the towers' token ids suppressed."""
    ids = model.generate(input_ids=prompt(), do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         use_cache=True, suppress_tokens=list(range(TEXT_VOCAB, VOCAB)))
    return ids[0, len(PROMPT):].tolist()


ALL_CASES = {**CASES, "source_without_shared_kv": ("e4b-bare", tuple(range(10, 15)), 32)}


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_mlx_lm_computes_the_bf16_output_as_transformers_computes_the_slice(sources, tmp_path, case):
    name, skip, widths = ALL_CASES[case]
    model, src = sources[name]
    out = tmp_path / "out"
    gslice.slice_model(src, out, layers_to_skip=skip, ffn_dims=widths, format=gslice.MLX())
    oracle = module_slice(model, skip, widths)
    want = logits(oracle).numpy()
    got = mlx_logits(out)
    diff = float(np.abs(got - want).max())
    print(f"\n{case}: max |mlx-lm - transformers| = {diff:.2e} (max |logit| {np.abs(want).max():.2f})")
    assert diff <= TOLERANCE
    assert mlx_greedy(out) == torch_greedy(oracle)
    if case == "e2b_block_skip":  # a control: the comparison tells another model apart
        unsliced = float(np.abs(got - logits(model).numpy()).max())
        assert unsliced >= CONTROL_MIN, unsliced


def test_the_copied_kv_of_sharing_layers_are_their_producers(sources, tmp_path):
    """A transformers-5 save has no k/v on the KV-sharing layers: gslice writes its producer's
    (layer 9 full attention, 8 sliding; after skipping 10-14 the sharing layers are 10-14)."""
    _, src = sources["e4b-bare"]
    out = tmp_path / "out"
    report = gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32, format=gslice.MLX())
    assert report.format["kv_copied_from_producer"] == [10, 11, 12, 13, 14]
    weights = read_checkpoint(out)
    lm = "model.language_model.layers."
    for layer in range(10, 15):
        producer = 9 if layer == 14 else 8  # layer 14 is the source's 19: full attention
        for kind in ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight"):
            assert np.array_equal(weights[f"{lm}{layer}.{kind}"], weights[f"{lm}{producer}.{kind}"])


def test_the_bf16_output_is_what_mlx_lm_convert_writes_from_the_checkpoint_slice(sources, tmp_path):
    """mlx_lm.convert of gslice's Hugging Face slice (towers included, the RoPE bases added as
    mlx-lm requires) holds the same tensors, byte for byte, and the same config.json."""
    _, src = sources["e4b"]
    hf, ours, theirs = tmp_path / "hf", tmp_path / "gslice-mlx", tmp_path / "convert"
    gslice.slice_model(src, hf, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(hf)
    convert(str(hf), mlx_path=str(theirs))
    gslice.slice_model(src, ours, layers_to_skip=range(10, 15), ffn_dims=32, format=gslice.MLX())
    mine, converted = read_checkpoint(ours), read_checkpoint(theirs)
    assert sorted(mine) == sorted(converted)
    assert [n for n in mine if mine[n].dtype != converted[n].dtype or not np.array_equal(mine[n], converted[n])] == []
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
    assert json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"] == \
        json.loads((theirs / "model.safetensors.index.json").read_text())["weight_map"]


def test_a_text_only_source_is_written_in_the_layout_mlx_lm_reads(tmp_path):
    """A Gemma3nForCausalLM checkpoint (model_type gemma3n_text, which mlx-lm does not know):
    the same tensors as tiny_runtimes.convert_to_mlx (which hands mlx_lm.convert the
    multimodal layout), and the same logits."""
    from gslice.evaluation.texts import sample_text

    from . import tiny_runtimes

    hf = tiny_runtimes.save_text_model(tiny_runtimes.build_text_model(seed=0), tmp_path / "hf", sample_text().text)
    theirs = tiny_runtimes.convert_to_mlx(hf, tmp_path / "convert")
    ours = tmp_path / "gslice"
    gslice.slice_model(hf, ours, format=gslice.MLX())
    mine, converted = read_checkpoint(ours), read_checkpoint(theirs)
    assert sorted(mine) == sorted(converted)
    assert [n for n in mine if mine[n].dtype != converted[n].dtype or not np.array_equal(mine[n], converted[n])] == []
    assert json.loads((ours / "config.json").read_text())["model_type"] == "gemma3n"
    assert np.array_equal(mlx_logits(ours), mlx_logits(theirs))


def bits16(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16))


QUANT_CASES = [(4, 32, "e2b_block_skip"), (8, 32, "e2b_block_skip"), (4, 64, "mixed_widths")]


@pytest.mark.parametrize("bits,group,case", QUANT_CASES)
def test_quantized_output_is_mx_quantize_and_mlx_lm_convert(sources, tmp_path, bits, group, case):
    name, skip, widths = CASES[case]
    _, src = sources[name]
    bf16, ours, theirs = tmp_path / "bf16", tmp_path / f"gslice-q{bits}", tmp_path / f"convert-q{bits}"
    gslice.slice_model(src, bf16, layers_to_skip=skip, ffn_dims=widths, format=gslice.MLX())
    report = gslice.slice_model(src, ours, layers_to_skip=skip, ffn_dims=widths, format=gslice.MLX(bits, group))
    convert(str(bf16), mlx_path=str(theirs), quantize=True, q_bits=bits, q_group_size=group)

    # every quantized module is mx.quantize of the BF16 weight gslice writes unquantized
    weights, quantized = mx.load(str(bf16 / "model.safetensors")), mx.load(str(ours / "model.safetensors"))
    modules = sorted(n.removesuffix(".scales") for n in quantized if n.endswith(".scales"))
    assert len(modules) == report.format["quantized"] > 0
    for m in modules:
        w, s, b = mx.quantize(weights[f"{m}.weight"], group_size=group, bits=bits)
        assert np.array_equal(np.array(quantized[f"{m}.weight"]), np.array(w)), m
        assert np.array_equal(bits16(quantized[f"{m}.scales"]), bits16(s)), m
        assert np.array_equal(bits16(quantized[f"{m}.biases"]), bits16(b)), m
    # the modules left unquantized are those whose input width is not whole groups
    kept = {k["name"] for k in report.quantization["kept"]}
    assert all(weights[n].shape[-1] % group for n in kept) and kept.isdisjoint(f"{m}.weight" for m in modules)

    # mlx_lm.convert -q of gslice's BF16 output: the same tensors, byte for byte, the same config and index
    mine, converted = read_checkpoint(ours), read_checkpoint(theirs)
    assert sorted(mine) == sorted(converted)
    differ = [n for n in mine if mine[n].dtype != converted[n].dtype or not np.array_equal(mine[n], converted[n])]
    assert differ == []
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
    index = [json.loads((d / "model.safetensors.index.json").read_text()) for d in (ours, theirs)]
    assert index[0]["weight_map"] == index[1]["weight_map"]
    assert index[0]["metadata"]["total_size"] == index[1]["metadata"]["total_size"]
    # total_parameters: gslice counts every parameter; mlx-lm's get_total_parameters counts
    # those of leaf modules only, missing AltUp's correct_output_scale (hidden_size per layer)
    assert index[0]["metadata"]["total_parameters"] == sum(w.size for w in weights.values())
    text = json.loads((ours / "config.json").read_text())["text_config"]
    missed = text["num_hidden_layers"] * text["hidden_size"]
    assert index[0]["metadata"]["total_parameters"] - index[1]["metadata"]["total_parameters"] == missed
    assert mx.load(str(ours / "model.safetensors"), return_metadata=True)[1] == {"format": "mlx"}
    a, b = mlx_logits(ours, float32=False), mlx_logits(theirs, float32=False)
    print(f"\nq{bits} g{group} {case}: {len(modules)} modules quantized; max |gslice - convert| logits = {np.abs(a - b).max()}")
    assert np.array_equal(a, b)


def test_mlx_lm_generate_runs_on_a_4_bit_output(sources, tmp_path):
    """The Mac path of the README, from the command line."""
    _, src = sources["e4b"]
    out = tmp_path / "e2b-q4"
    gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32, format=gslice.MLX(4, 32))
    r = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(out), "--prompt", "t5 t6 t7",
                        "--max-tokens", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Generation: 4 tokens" in r.stdout, r.stdout
