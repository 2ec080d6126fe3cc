"""Where a source checkpoint lives: a local folder (or, see hub.py, a Hugging Face repo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError


@dataclass(frozen=True)
class Source:
    path: Path
    label: str  # what the user typed: a path or a repo id
    repo_id: str | None = None
    revision: str | None = None


def resolve_source(src: str | os.PathLike, revision: str | None = None) -> Source:
    path = Path(src).expanduser()
    if path.is_dir():
        return Source(path.resolve(), str(src))
    if path.exists():
        raise SourceError(f"source {src} is a file; give the checkpoint folder that holds config.json")
    raise SourceError(f"source {src} does not exist")
