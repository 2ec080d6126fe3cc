"""Shared fixtures: tiny Gemma 3n checkpoints with the published layout, written once per
session, and a CLI runner that returns exit code, stdout and stderr separately."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from gslice.cli import main
from hub_server import FakeHub
from range_reference import COMMIT, REPO
from gslice.testing import E2B_LIKE, E4B_LIKE, TinyGemma3n, write_tiny_checkpoint

INTEROP = Path(__file__).parent / "interop"


def pytest_ignore_collect(collection_path, config):
    """tests/interop imports torch and transformers, which the core tier must not need. The
    default run deselects its tests (addopts: -m 'not interop'), so it need not import them."""
    if collection_path == INTEROP and "not interop" in (config.getoption("markexpr") or ""):
        return True
    return None


@pytest.fixture(scope="session")
def e4b(tmp_path_factory) -> Path:
    """Tiny E4B-shaped checkpoint (35 layers, 15 KV-sharing), 2 shards, BF16. Read-only."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "e4b", E4B_LIKE, shards=2)


@pytest.fixture(scope="session")
def e2b(tmp_path_factory) -> Path:
    """Tiny E2B-shaped checkpoint (30 layers, 10 KV-sharing), single file."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("src") / "e2b", E2B_LIKE, shards=1)


@pytest.fixture
def e4b_copy(e4b, tmp_path) -> Path:
    """A private copy of the E4B checkpoint that a test may damage."""
    return Path(shutil.copytree(e4b, tmp_path / "damaged"))


@pytest.fixture
def make_checkpoint(tmp_path):
    def make(model: TinyGemma3n, name: str = "custom", shards: int = 2) -> Path:
        return write_tiny_checkpoint(tmp_path / name, model, shards=shards)

    return make


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli():
    runner = CliRunner()

    def run(*args: str) -> Result:
        r = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return run


def hidden_leftovers(parent: Path) -> list[str]:
    """gslice's temporary folders (.gslice-*, .<name>.gslice-partial-*) left in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and "gslice" in p.name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) -> SHA-256, to show it is byte-identical."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link -> " + str(p.readlink())
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_sparse_checkpoint(path: Path, model: TinyGemma3n) -> Path:
    """A one-shard checkpoint of ``model`` whose data are holes (zeros, valid BF16): a large
    source costs no time or disk to make, while slicing it writes every output byte."""
    from gslice.testing import config, tensor_shapes

    path.mkdir(parents=True)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in sorted(tensor_shapes(model).items()):
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    with open(path / "model.safetensors", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)
    (path / "config.json").write_text(json.dumps(config(model)))
    return path


@pytest.fixture(autouse=True)
def private_range_cache(tmp_path, monkeypatch):
    """No test touches the user's gslice range cache (~/.cache/gslice/hub-ranges)."""
    monkeypatch.setenv("GSLICE_CACHE", str(tmp_path / "gslice-cache"))


@pytest.fixture
def hub_of(tmp_path, monkeypatch):
    """hub_of(folder): ``folder`` as google/gemma-3n-E4B-it on a local Hub, which this process
    (and the processes it starts) talk to; empty caches."""
    with contextlib.ExitStack() as stack:

        def serve(folder: Path) -> FakeHub:
            server = stack.enter_context(FakeHub())
            server.add_repo(REPO, folder, COMMIT)
            for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
                monkeypatch.delenv(var, raising=False)
            monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
            monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
            monkeypatch.setenv("GSLICE_CACHE", str(tmp_path / "gslice-cache"))
            monkeypatch.setenv("GSLICE_RANGE_GAP", "0")
            server.cache = tmp_path / "gslice-cache"
            return server

        yield serve


@pytest.fixture
def hub(e4b, hub_of):
    """The tiny E4B checkpoint as google/gemma-3n-E4B-it on a local Hub; empty caches."""
    return hub_of(e4b)


@pytest.fixture
def installed(monkeypatch):
    """installed(*modules): only these runtime modules count as installed."""
    from gslice.evaluation import runners

    real = importlib.util.find_spec
    runtime_modules = {m for info in runners.RUNTIMES.values() for m in info.requires}

    def set_installed(*modules):
        def find_spec(name, *a, **kw):
            if name in runtime_modules:
                return real("json") if name in modules else None  # any spec stands for "present"
            return real(name, *a, **kw)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return set_installed
