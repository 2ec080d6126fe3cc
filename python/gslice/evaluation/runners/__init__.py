"""The runtimes a model is evaluated in, chosen from what its path is.

* a GGUF file (it starts with the bytes ``GGUF``): llama.cpp, through llama-cpp-python;
* a folder of safetensors written by MLX (their header metadata says ``"format": "mlx"``, as
  ``mlx.core.save_safetensors`` and so ``mlx_lm.convert`` write it), or a gslice output whose
  manifest says it was written for MLX (``output_format`` "mlx"): mlx-lm;
* any other folder with a config.json: transformers (a Hugging Face checkpoint).

Each runtime is one module with one ``Runner`` class; none is imported until it is needed, and
a runtime that is not installed is reported in one line naming the extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import GsliceError, SourceError


@dataclass(frozen=True)
class RuntimeInfo:
    name: str  # as reports show it
    module: str  # the gslice module holding its Runner
    requires: tuple[str, ...]  # import names that must be present
    distributions: tuple[str, ...]  # whose versions the reports name
    extra: str  # pip install 'gslice[<extra>]'


RUNTIMES = {
    "transformers": RuntimeInfo("transformers", "transformers_runner", ("torch", "transformers"), ("transformers", "torch"), "transformers"),
    "llama.cpp": RuntimeInfo("llama.cpp", "llamacpp_runner", ("llama_cpp",), ("llama-cpp-python",), "llama-cpp"),
    "mlx-lm": RuntimeInfo("mlx-lm", "mlx_runner", ("mlx", "mlx_lm"), ("mlx-lm", "mlx"), "mlx"),
}


class RuntimeMissing(GsliceError):
    """The runtime a model needs is not installed."""


class Tokenizer:
    """The source's tokenizer as its runtime applies it: text -> ids without special tokens."""

    bos: int

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError


class Runner:
    """One model loaded in one runtime. ``window_logits`` runs one window from an empty KV
    cache and yields float32 logits [rows, V] for every position, in order; a yielded block may
    be a view into the runtime's buffer, valid until the next one is requested."""

    vocab_size: int

    def window_logits(self, tokens: np.ndarray) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def runtime_of(path: str | os.PathLike) -> str:
    """The runtime that evaluates ``path`` (see the module docstring); one line if none does."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(4) == b"GGUF":
                return "llama.cpp"
        raise SourceError(f"{p} is a file but not a GGUF model (it does not start with 'GGUF'); give a GGUF file or a model folder")
    if not p.is_dir():
        raise SourceError(f"{p} does not exist")
    if not (p / "config.json").is_file():
        raise SourceError(f"{p} has no config.json: not a Hugging Face or MLX model folder")
    shards = sorted(p.glob("*.safetensors"))
    if not shards:
        raise SourceError(f"{p} has no *.safetensors weights")
    return "mlx-lm" if _safetensors_format(shards[0]) == "mlx" or _gslice_format(p) == "mlx" else "transformers"


def _gslice_format(folder: Path) -> str | None:
    """The output format a gslice manifest in ``folder`` names, if there is one."""
    from ...manifest import MANIFEST_NAME

    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        return (data.get("output_format") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _safetensors_format(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(min(n, 100 << 20)))
        except ValueError:
            return None
    meta = header.get("__metadata__") or {}
    return meta.get("format")


def require(runtime: str, path: str | os.PathLike) -> RuntimeInfo:
    """The runtime's description, or RuntimeMissing (exit 2) naming the extra to install."""
    info = RUNTIMES[runtime]
    missing = [m for m in info.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeMissing(
            f"{path} runs in {info.name}, which is not installed ({', '.join(missing)} missing): "
            f"pip install 'gslice[{info.extra}]'"
        )
    return info


def version(runtime: str) -> str:
    """E.g. 'llama.cpp (llama-cpp-python 0.3.36)', 'transformers 5.23.0 (torch 2.15.0)'."""
    info = RUNTIMES[runtime]
    named = []
    for dist in info.distributions:
        try:
            named.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            named.append(dist)
    if named[0].split()[0] == info.name:
        head, rest = named[0], named[1:]
    else:
        head, rest = info.name, named
    return f"{head} ({', '.join(rest)})" if rest else head


def module(runtime: str):
    return importlib.import_module(f"{__name__}.{RUNTIMES[runtime].module}")
