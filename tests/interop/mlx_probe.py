"""What mlx-lm (and mlx-vlm) do with gslice's slices: the commands behind docs/mlx.md.

Not a test module (pytest does not collect it): each ``fact_*`` function runs the real runtime
on tiny random Gemma 3n models and prints what it found, so every statement in docs/mlx.md can
be checked again on another version::

    python -m interop.mlx_probe            # from tests/, every fact
    python -m interop.mlx_probe load kv    # some of them

Needs the interop venv (torch, transformers) plus mlx[cpu] and mlx-lm (and mlx-vlm for
``vlm``). Sources are built with transformers (``tiny_gemma3n``) and given what the published
checkpoints have and transformers 5 no longer saves: k_proj / v_proj / k_norm for the
KV-sharing layers (``hub_layout``), and a tokenizer.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import gslice

from .tiny_gemma3n import PROMPT, build_tiny_model, logits, module_slice, save

SHARED_KV = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")
LM = "model.language_model."


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the model's ids ("<pad>" 0, "<eos>" 1, "<bos>" 2, "t3" ...),
    enough for transformers' AutoTokenizer and so for mlx-lm's loader."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<pad>", "model_max_length": 256}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}")


def hub_layout(folder: Path, seed: int = 7) -> None:
    """Adds random k_proj / v_proj / k_norm to every KV-sharing layer, as the published
    checkpoints store them (transformers ignores them: those layers read their producer's cache)."""
    cfg = json.loads((folder / "config.json").read_text())["text_config"]
    weights = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    first_shared = cfg["num_hidden_layers"] - cfg["num_kv_shared_layers"]
    kv_width = cfg["num_key_value_heads"] * cfg["head_dim"]
    dtype = weights[f"{LM}layers.0.{SHARED_KV[0]}"].dtype
    for i in range(first_shared, cfg["num_hidden_layers"]):
        p = f"{LM}layers.{i}."
        weights[p + SHARED_KV[0]] = (torch.randn(kv_width, cfg["hidden_size"], generator=gen) / cfg["hidden_size"] ** 0.5).to(dtype)
        weights[p + SHARED_KV[1]] = (torch.randn(kv_width, cfg["hidden_size"], generator=gen) / cfg["hidden_size"] ** 0.5).to(dtype)
        weights[p + SHARED_KV[2]] = (torch.rand(cfg["head_dim"], generator=gen) + 0.5).to(dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def make_source(root: Path, name: str = "e4b", dtype: torch.dtype = torch.float32):
    """(model, folder): the tiny E4B-like (20 layers, last 10 shared, FFN 64) or E2B-like
    (15 layers, last 5 shared, FFN 32) source with hub-layout K/V and a tokenizer."""
    layers, shared, ffn, seed = {"e4b": (20, 10, 64, 0), "e2b": (15, 5, 32, 1)}[name]
    model = build_tiny_model(layers, shared, ffn, seed=seed)
    folder = save(copy.deepcopy(model).to(dtype), root / f"src-{name}")
    # The in-memory model gets the stored values of the parameters only: `.to(bfloat16)` would
    # also round its constant buffers (embedding scales, 2**-0.5 ...), which mlx-lm computes exactly.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    hub_layout(folder)
    write_tokenizer(folder, model.config.text_config.vocab_size)
    return model, folder


def rope_fields(folder: Path) -> None:
    """What mlx-lm's TextConfig requires and transformers 5 no longer writes (it writes
    ``rope_parameters``): ``rope_theta`` (full attention) and ``rope_local_base_freq`` (sliding)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg["text_config"]
    text["rope_theta"] = text["rope_parameters"]["full_attention"]["rope_theta"]
    text["rope_local_base_freq"] = text["rope_parameters"]["sliding_attention"]["rope_theta"]
    path.write_text(json.dumps(cfg, indent=2))


def mlx_logits(folder: Path, with_cache: bool = True) -> np.ndarray:
    """mlx-lm's logits for PROMPT, in one forward pass, with the model's own KV cache or none."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(folder))
    cache = make_prompt_cache(model) if with_cache else None
    out = model(mx.array([PROMPT]), cache=cache)
    return np.array(out.astype(mx.float32))


def mlx_greedy(folder: Path, new_tokens: int = 6) -> list[int]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(folder))
    steps = generate_step(mx.array(PROMPT), model, max_tokens=new_tokens, sampler=lambda x: mx.argmax(x, axis=-1))
    return [int(t) for t, _ in steps]


def torch_greedy(model, new_tokens: int = 6) -> list[int]:
    from .tiny_gemma3n import greedy

    return greedy(model, new_tokens=new_tokens)[0, len(PROMPT):].tolist()


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def show(title: str, value) -> None:
    print(f"  {title}: {value}")


# -- the facts ------------------------------------------------------------------------------


def fact_load(root: Path) -> None:
    """What mlx-lm needs to load a gslice bf16 slice of a Hub-layout source."""
    model, src = make_source(root)
    out = root / "load"
    gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32)
    from mlx_lm import load

    try:
        load(str(out))
        show("as gslice writes it", "loads")
    except Exception as e:  # noqa: BLE001 - reporting what the runtime says
        show("as gslice writes it", f"{type(e).__name__}: {e}")
    rope_fields(out)
    load(str(out))
    show("with rope_theta and rope_local_base_freq added to text_config", "loads")
    # transformers >= 4.56 saves no k/v for KV-sharing layers: a source saved by it.
    bare = root / "bare-src"
    save(model, bare)
    write_tokenizer(bare, model.config.text_config.vocab_size)
    bare_out = root / "bare-out"
    gslice.slice_model(bare, bare_out, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(bare_out)
    try:
        load(str(bare_out))
    except Exception as e:  # noqa: BLE001
        show("source saved by transformers 5 (no k/v on sharing layers)", f"{type(e).__name__}: {str(e).splitlines()[0]} ...")
    # --text-only: model_type gemma3n_text
    text_only = root / "text-only"
    gslice.slice_model(src, text_only, text_only=True)
    cfg = json.loads((text_only / "config.json").read_text())
    cfg["rope_theta"], cfg["rope_local_base_freq"] = (cfg["rope_parameters"][k]["rope_theta"] for k in ("full_attention", "sliding_attention"))
    (text_only / "config.json").write_text(json.dumps(cfg))
    try:
        load(str(text_only))
    except Exception as e:  # noqa: BLE001
        show("--text-only output (model_type gemma3n_text)", f"{type(e).__name__}: {e}")
    # no tokenizer files
    no_tok = root / "no-tokenizer"
    shutil.copytree(out, no_tok)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink()
    try:
        _, tok = load(str(no_tok))
        inner = getattr(tok, "_tokenizer", tok)
        show("without tokenizer files", f"loads, tokenizer {type(inner).__name__} (vocab {len(inner)}), 't5 t6' -> {tok.encode('t5 t6')}")
    except Exception as e:  # noqa: BLE001
        show("without tokenizer files", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


CASES = {
    # id: (source, layers_to_skip, ffn_dims)
    "none": ("e4b", (), None),
    "e2b_block_skip": ("e4b", tuple(range(10, 15)), 32),
    "mixed_widths": ("e4b", (7,), (64, 32, 48, 40, 56, 24) * 3 + (64,)),
    "skip_below_sharing": ("e4b", (3,), None),
    "skips_in_kv_region": ("e4b", (11, 14, 17), None),
    "e2b_source": ("e2b", (3, 11), 24),
}


def fact_logits(root: Path, cases=CASES) -> dict[str, tuple[float, float, bool]]:
    """mlx-lm (with its KV cache, and without) against transformers on the module-level slice."""
    sources = {}
    found = {}
    for case, (name, skip, widths) in cases.items():
        if name not in sources:
            sources[name] = make_source(root, name)
        model, src = sources[name]
        out = root / f"logits-{case}"
        gslice.slice_model(src, out, layers_to_skip=skip, ffn_dims=widths)
        rope_fields(out)
        oracle = module_slice(model, skip, widths)
        want = logits(oracle).numpy()
        # transformers' own float32 rounding on this slice: the same model in float64
        with torch.no_grad():
            exact = copy.deepcopy(oracle).to(torch.float64)(input_ids=torch.tensor([PROMPT]), use_cache=False).logits.numpy()
        noise = float(np.abs(want - exact).max())
        cached = float(np.abs(mlx_logits(out, True) - want).max())
        uncached = float(np.abs(mlx_logits(out, False) - want).max())
        tokens = mlx_greedy(out) == torch_greedy(oracle)
        found[case] = (cached, uncached, tokens, noise)
        show(case, f"max |mlx - transformers|: with cache {cached:.2e}, without cache {uncached:.2e} "
                   f"(transformers fp32 vs fp64: {noise:.2e}; max |logit| {np.abs(want).max():.2f}); greedy tokens agree: {tokens}")
    return found


def fact_dtype(root: Path) -> None:
    """A BF16 slice: mlx-lm computes in BF16 (far from an fp32 reference); cast to fp32 it matches."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, src = make_source(root, "e4b", dtype=torch.bfloat16)
    out = root / "bf16"
    gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(out)
    # the oracle: the same BF16-rounded weights, computed in fp32 by transformers
    oracle = module_slice(model, range(10, 15), 32)
    want = logits(oracle).numpy()
    mlx_model, _ = load(str(out))
    show("parameter dtype after mlx_lm.load", mlx_model.parameters()["model"]["language_model"]["norm"]["weight"].dtype)
    bf16 = np.array(mlx_model(mx.array([PROMPT]), cache=make_prompt_cache(mlx_model)).astype(mx.float32))
    mlx_model.set_dtype(mx.float32)
    f32 = np.array(mlx_model(mx.array([PROMPT]), cache=make_prompt_cache(mlx_model)))
    show("max |mlx - transformers fp32|, mlx computing in bf16", f"{np.abs(bf16 - want).max():.3g} (logits std {want.std():.3g})")
    show("the same after model.set_dtype(mx.float32)", f"{np.abs(f32 - want).max():.3g}")


def fact_convert(root: Path) -> None:
    """What ``mlx_lm.convert`` writes for a gslice slice, with and without -q."""
    _, src = make_source(root, "e4b", dtype=torch.bfloat16)
    out = root / "convert-in"
    gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(out)
    for flags in ([], ["-q"], ["-q", "--q-bits", "8", "--q-group-size", "32"]):
        dst = root / ("convert-out" + "".join(flags).replace("-", "_"))
        r = run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(out), "--mlx-path", str(dst), *flags])
        assert r.returncode == 0, r.stderr
        print(f"mlx_lm.convert {' '.join(flags)}")
        show("files", sorted(p.name for p in dst.iterdir()))
        cfg = json.loads((dst / "config.json").read_text())
        before = json.loads((out / "config.json").read_text())
        show("config.json keys added", {k: cfg[k] for k in sorted(cfg.keys() - before.keys())})
        show("config.json keys removed", sorted(before.keys() - cfg.keys()))
        show("config.json values changed", {k: (before[k], cfg[k]) for k in sorted(cfg.keys() & before.keys()) if cfg[k] != before[k]})
        show("tokenizer_config.json as convert writes it", json.loads((dst / "tokenizer_config.json").read_text()))
        show("quantization", cfg.get("quantization"))
        show("quantization_config", cfg.get("quantization_config"))
        from safetensors import safe_open

        with safe_open(str(dst / "model.safetensors"), "np") as f:
            names = sorted(f.keys())
            meta = f.metadata()
            dtypes = {n: (str(f.get_slice(n).get_dtype()), f.get_slice(n).get_shape()) for n in names}
        show("safetensors metadata", meta)
        show("tensors", len(names))
        show("tower tensors", [n for n in names if "tower" in n or "embed_audio" in n or "embed_vision" in n][:3])
        scales = sorted(n.removesuffix(".scales") for n in names if n.endswith(".scales"))
        generic = sorted({n.replace(LM, "").split(".")[0] if "layers." not in n else "layers.*." + ".".join(n.split(".")[4:]) for n in scales})
        show("quantized modules (by pattern)", generic)
        weights = sorted({n for n in names if n.endswith(".weight") and n.removesuffix(".weight") not in scales})
        kept = sorted({(n.replace(LM, "") if "layers." not in n else "layers.*." + ".".join(n.split(".")[4:])) for n in weights})
        show("weights left unquantized (by pattern)", kept)
        for n in (LM + "embed_tokens.weight", LM + "embed_tokens.scales", LM + "layers.0.mlp.gate_proj.weight", LM + "layers.0.mlp.gate_proj.scales", LM + "layers.0.mlp.gate_proj.biases"):
            if n in dtypes:
                show(n, dtypes[n])
        index = dst / "model.safetensors.index.json"
        if index.exists():
            show("index metadata", json.loads(index.read_text())["metadata"])


def fact_convert_e4b_shapes(root: Path) -> None:
    """At E4B's real widths (hidden 2048, laurel 64, per-layer 256, altup 4): which modules
    mlx_lm.convert -q quantizes at group sizes 32, 64 and 128. The predicate only looks at
    module types and the input width, so one layer at full width shows it; weights are zeros."""
    from mlx_lm.models import gemma3n
    from mlx_lm.utils import quantize_model
    from mlx.utils import tree_flatten

    cfg = json.loads((Path(gslice.__file__).parent / "data" / "gemma-3n-E4B.config.json").read_text())
    text = dict(cfg["text_config"], num_hidden_layers=2, num_kv_shared_layers=0, vocab_size=512,
                vocab_size_per_layer_input=512, layer_types=["sliding_attention", "full_attention"],
                intermediate_size=[16384, 8192], activation_sparsity_pattern=[0.95, 0.0])
    for group in (32, 64, 128):
        model = gemma3n.Model(gemma3n.ModelArgs.from_dict({"model_type": "gemma3n", "text_config": text}))
        model, qcfg = quantize_model(model, {}, group, 4)
        names = dict(tree_flatten(model.parameters()))
        q = sorted({n.removesuffix(".scales").replace("model.language_model.", "").replace("layers.0.", "layers.*.").replace("layers.1.", "layers.*.") for n in names if n.endswith(".scales")})
        plain = sorted({n.replace("model.language_model.", "").replace("layers.0.", "layers.*.").replace("layers.1.", "layers.*.") for n in names if n.endswith(".weight") and n.removesuffix(".weight") + ".scales" not in names and names[n].ndim == 2})
        print(f"E4B widths, group size {group}:")
        show("quantized", q)
        show("2-D weights left in bf16", plain)
        show("config quantization", qcfg["quantization"])


def fact_generate(root: Path) -> None:
    """The command line: ``mlx_lm.generate --model OUT`` on a gslice slice (rope fields added)."""
    _, src = make_source(root, "e4b", dtype=torch.bfloat16)
    out = root / "gen"
    gslice.slice_model(src, out, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(out)
    r = run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(out), "--prompt", "t5 t6 t7", "--max-tokens", "4"])
    show("exit status", r.returncode)
    show("stdout", r.stdout.strip().replace("\n", " | "))
    if r.returncode:
        show("stderr", r.stderr.strip().splitlines()[-1])


def fact_vlm(root: Path) -> None:
    """mlx-vlm on the same slices (its own venv: GSLICE_MLX_VLM_PYTHON names its python)."""
    import os

    python = os.environ.get("GSLICE_MLX_VLM_PYTHON", sys.executable)
    model, src = make_source(root, "e4b")
    folders = []
    for case in ("none", "e2b_block_skip", "mixed_widths", "skip_below_sharing"):
        _, skip, widths = CASES[case]
        out = root / f"vlm-{case}"
        gslice.slice_model(src, out, layers_to_skip=skip, ffn_dims=widths)
        np.save(out / "oracle.npy", logits(module_slice(model, skip, widths)).numpy())
        (out / "prompt.json").write_text(json.dumps(list(PROMPT)))
        folders.append(str(out))
    # mlx_lm.convert's layout of the same slice (towers dropped, rope fields added)
    converted = root / "vlm-e2b_block_skip-mlx_lm.convert"
    rope_fields(root / "vlm-e2b_block_skip")
    r = run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(root / "vlm-e2b_block_skip"), "--mlx-path", str(converted)])
    assert r.returncode == 0, r.stderr
    for f in ("oracle.npy", "prompt.json"):
        shutil.copy(root / "vlm-e2b_block_skip" / f, converted / f)
    folders.append(str(converted))
    r = run([python, str(Path(__file__).with_name("mlx_vlm_probe.py")), *folders])
    print(r.stdout.rstrip() or r.stderr.strip().splitlines()[-1])


def fact_convert_bits(root: Path) -> None:
    """gslice's engine (mlx_affine) against ``mlx_lm.convert -q``, tensor by tensor."""
    from gslice import engine
    from gslice.engine import AffineQuantization, OutputPlan, TensorPlan
    from gslice.testing import read_checkpoint

    _, src = make_source(root, "e4b", dtype=torch.bfloat16)
    sliced = root / "bits-in"
    gslice.slice_model(src, sliced, layers_to_skip=range(10, 15), ffn_dims=32)
    rope_fields(sliced)
    for bits, group in ((4, 32), (8, 32)):
        dst = root / f"bits-convert-{bits}"
        r = run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(sliced), "--mlx-path", str(dst),
                 "-q", "--q-bits", str(bits), "--q-group-size", str(group)])
        assert r.returncode == 0, r.stderr
        converted = read_checkpoint(dst)
        modules = sorted(n.removesuffix(".scales") for n in converted if n.endswith(".scales"))
        plan = [TensorPlan(f"{m}.weight", f"{m}.weight", engine.copy(),
                           AffineQuantization(bits, group, f"{m}.scales", f"{m}.biases", f"{m}.weight")) for m in modules]
        ours = root / f"bits-gslice-{bits}"
        engine.execute(sliced, [OutputPlan(ours, plan)])
        mine = read_checkpoint(ours)
        differ = [n for n in mine if not np.array_equal(mine[n], converted[n]) or mine[n].dtype != converted[n].dtype]
        show(f"{bits}-bit, groups of {group}", f"{len(modules)} quantized modules x 3 parts; parts that differ from mlx_lm.convert: {differ}")


def fact_ram(root: Path) -> None:
    """mlx reads weights into anonymous memory (not a shared file mapping): the model must fit in RAM."""
    import mlx.core as mx
    from gslice.testing import random_bf16, write_safetensors

    path = write_safetensors(root / "w.safetensors", {"w": ("BF16", random_bf16(np.random.default_rng(0), (4096, 16384)))})

    def anon_kb() -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon"))

    before = anon_kb()
    weights = mx.load(str(path))
    lazy = anon_kb()
    mx.eval(weights["w"])
    show("file", f"{path.stat().st_size / 1e6:.0f} MB")
    show("anonymous RSS growth after mx.load (lazy) / after evaluating the tensor",
         f"{(lazy - before) / 1e3:.0f} MB / {(anon_kb() - before) / 1e3:.0f} MB")


FACTS = {
    "load": fact_load,
    "logits": fact_logits,
    "dtype": fact_dtype,
    "convert": fact_convert,
    "e4b": fact_convert_e4b_shapes,
    "generate": fact_generate,
    "vlm": fact_vlm,
    "bits": fact_convert_bits,
    "ram": fact_ram,
}


def main(argv: list[str]) -> None:
    import mlx.core as mx
    import mlx_lm
    import transformers

    print(f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in argv or list(FACTS):
            print(f"== {name}: {FACTS[name].__doc__.splitlines()[0]}")
            sub = Path(tmp) / name
            sub.mkdir()
            FACTS[name](sub)


if __name__ == "__main__":
    main(sys.argv[1:])
