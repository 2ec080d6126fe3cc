"""Where a source checkpoint lives: a local folder, or a Hugging Face repo id that is fetched
into (or found in) the standard Hugging Face cache (see hub.py)."""

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
    commit: str | None = None  # the snapshot's commit hash, for a Hub source


def resolve_source(src: str | os.PathLike, revision: str | None = None) -> Source:
    """A local folder wins over a repo id of the same spelling; anything else that looks like
    'owner/name' is looked up on the Hub (or in the cache when offline)."""
    path = Path(src).expanduser()
    if path.is_dir():
        if revision is not None:
            raise SourceError(f"--revision {revision} applies to Hub repositories, but {src} is a local folder")
        return Source(path.resolve(), str(src))
    if path.exists():
        raise SourceError(f"source {src} is a file; give the checkpoint folder that holds config.json")
    from . import gemma3n, hub

    if isinstance(src, str) and hub.looks_like_repo_id(src):
        snap = hub.download(src, revision, allow_patterns=gemma3n.HUB_PATTERNS, ignore_patterns=gemma3n.HUB_IGNORE)
        return Source(snap.path, src, repo_id=src, revision=snap.revision, commit=snap.commit)
    raise SourceError(f"source {src} does not exist")
