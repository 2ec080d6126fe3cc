"""Fixtures of the interop tier: tiny random Gemma 3n models saved once per session, and a
record of the largest logits difference per case, printed at the end of the run and kept in
pytest's cache (``.pytest_cache/v/gslice/interop``) so that notes can quote it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

from .tiny_gemma3n import build_tiny_model, save

HERE = Path(__file__).parent
TOLERANCE = 1e-5  # fp32, max abs logits difference
CONTROL_MIN = 1e-3  # what a wrong slice must differ by at least: 100 x the tolerance

# The models are tiny: one thread computes them in milliseconds, while torch's default pool
# (one thread per core) spins for seconds per forward pass on a busy 2-core machine.
torch.set_num_threads(1)

# case -> largest difference that had to stay within TOLERANCE
_RESULTS: dict[str, float] = {}
# control -> smallest difference that had to be large (a wrong slice, the unsliced model)
_CONTROLS: dict[str, float] = {}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    # Every test in this folder belongs to the interop tier, which the default run deselects.
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.interop)


@dataclass(frozen=True)
class Source:
    """A tiny model in memory and its save_pretrained folder (read-only for tests)."""

    model: torch.nn.Module
    path: Path


@pytest.fixture(scope="session")
def e4b_like(tmp_path_factory) -> Source:
    """20 layers, the last 10 KV-shared (producers: 8 sliding, 9 full), FFN 64, 12 audio blocks."""
    model = build_tiny_model(num_layers=20, num_kv_shared=10, ffn_width=64, seed=0)
    return Source(model, save(model, tmp_path_factory.mktemp("src") / "e4b-like"))


@pytest.fixture(scope="session")
def e2b_like(tmp_path_factory) -> Source:
    """15 layers, the last 5 KV-shared (producers: 8 sliding, 9 full), FFN 32."""
    model = build_tiny_model(num_layers=15, num_kv_shared=5, ffn_width=32, seed=1)
    return Source(model, save(model, tmp_path_factory.mktemp("src") / "e2b-like"))


@pytest.fixture
def record():
    """record(case, value): keeps the largest difference seen for ``case``."""

    def put(case: str, value: float) -> float:
        _RESULTS[case] = max(value, _RESULTS.get(case, 0.0))
        return value

    return put


@pytest.fixture
def control():
    """control(case, value): keeps the smallest difference seen for a comparison that must fail."""

    def put(case: str, value: float) -> float:
        _CONTROLS[case] = min(value, _CONTROLS.get(case, float("inf")))
        return value

    return put


def pytest_terminal_summary(terminalreporter, config):
    if not (_RESULTS or _CONTROLS):
        return
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    report = {
        "versions": versions,
        "tolerance": TOLERANCE,
        "max_abs_diff": dict(sorted(_RESULTS.items())),
        "controls_min_abs_diff": dict(sorted(_CONTROLS.items())),
    }
    if getattr(config, "cache", None) is not None:  # absent under -p no:cacheprovider
        config.cache.set("gslice/interop", report)
    tr = terminalreporter
    tr.section("gslice interop: max abs logits difference")
    tr.write_line(f"transformers {versions['transformers']}, torch {versions['torch']}")
    width = max(map(len, [*_RESULTS, *_CONTROLS]))
    tr.write_line(f"largest per case, must be <= {TOLERANCE:g}:")
    for case, value in sorted(_RESULTS.items()):
        tr.write_line(f"  {case:<{width}}  {value:.3g}")
    tr.write_line("smallest per control (a slice that must differ), must be large:")
    for case, value in sorted(_CONTROLS.items()):
        tr.write_line(f"  {case:<{width}}  {value:.3g}")
    tr.write_line("(kept as JSON in pytest's cache: `python -m pytest --cache-show gslice/interop`)")


@dataclass(frozen=True)
class RuntimeModels:
    """Tiny Gemma 3n text models in every runtime's format (tiny_text_models.py): a source, a
    slightly perturbed 'slice' and a badly perturbed one, as Hugging Face folders (float32),
    GGUF files (llama.cpp's own conversion) and MLX folders (mlx_lm.convert)."""

    hf: dict[str, Path]
    gguf: dict[str, Path]
    mlx: dict[str, Path]
    texts: dict[str, Path]  # two small text files cut from gslice's sample


@pytest.fixture(scope="session")
def runtime_models(tmp_path_factory) -> RuntimeModels:
    from gslice.evaluation.texts import sample_text

    from . import tiny_text_models as tm

    root = tmp_path_factory.mktemp("runtimes")
    sample = sample_text().text
    texts = {"a": root / "chapter-1.txt", "b": root / "chapter-2.txt"}
    start2 = sample.index("Chapter 2")
    texts["a"].write_text(sample[:start2])
    texts["b"].write_text(sample[start2 : sample.index("Chapter 3")])
    source = tm.build(logit_scale=4.0)
    models = {
        "source": source,
        "mild": tm.perturbed(source, range(0, 4), 0.005),
        "wrong": tm.perturbed(source, range(0, tm.NUM_LAYERS), 2.0),
    }
    hf = {name: tm.save(m, root / "hf" / name, torch.float32) for name, m in models.items()}
    gguf = {name: root / "gguf" / f"{name}.gguf" for name in models}
    (root / "gguf").mkdir()
    tm.convert_to_gguf([(hf[n], gguf[n]) for n in models])
    mlx = {name: tm.convert_to_mlx(hf[name], root / "mlx" / name) for name in ("source", "wrong")}
    return RuntimeModels(hf, gguf, mlx, texts)
