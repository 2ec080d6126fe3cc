"""The source's top-k log-probabilities, computed once and reused for every slice.

One ``.npz`` file per (source, texts, tokenization, windowing, k, runtime): its name carries the
SHA-256 of a key made of the source's identity (name, size and mtime of every weight, config and
tokenizer file; a GGUF file's own), the SHA-256 of every text, the SHA-256 of the token ids the
source's tokenizer made of them, the context, stride, --max-tokens, k, and the runtime with its
version and settings. Changing any of them (another text, an edited text, another context)
looks up another file; the key is also stored in the file and checked on reading, so a file
cannot be taken for another. Files are written to a temporary name and renamed.

Size: per scored token, k int32 ids + k float64 log-probabilities + 2 float64 (the next token's
log-probability, the tail mass) = 12 * k + 16 bytes: 400 bytes at k = 32, so 4 MB per 10,000
tokens scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .metrics import SourceRows

FORMAT = "gslice-eval-cache/1"
_SKIP = {"README.md", "gslice-manifest.json"}  # rewritten when results are recorded; not the model


def default_dir() -> Path:
    """``eval`` in gslice's cache folder (``$GSLICE_CACHE``, by default ~/.cache/gslice)."""
    from ..range_cache import gslice_cache

    return gslice_cache() / "eval"


def fingerprint(path: str | os.PathLike) -> list[dict]:
    """What identifies a model on disk without reading it: its files' names, sizes and mtimes."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and f.name not in _SKIP)
    out = []
    for f in files:
        st = f.stat()
        out.append({"name": f.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def key_of(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tokens_sha256(texts_ids: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for ids in texts_ids:
        h.update(len(ids).to_bytes(8, "little"))
        h.update(np.asarray(ids, dtype="<i4").tobytes())
    return h.hexdigest()


class SourceCache:
    def __init__(self, directory: str | os.PathLike, label: str, fields: dict):
        self.fields = {"format": FORMAT, **fields}
        self.key = key_of(self.fields)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:60] or "source"
        self.path = Path(directory) / f"{stem}-{self.key[:16]}.npz"

    def load(self) -> tuple[SourceRows, dict] | None:
        """The cached rows and the record of the run that made them, or None (absent, another
        key, or unreadable: then it is simply computed again)."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != self.key:
                    return None
                rows = SourceRows(z["target_lp"], z["topk_ids"], z["topk_lp"], z["tail"])
        except (OSError, ValueError, KeyError):
            return None
        return rows, meta["run"]

    def save(self, rows: SourceRows, run: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"key": self.key, "fields": self.fields, "run": run})
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(meta), target_lp=rows.target_lp, topk_ids=rows.topk_ids, topk_lp=rows.topk_lp, tail=rows.tail)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
