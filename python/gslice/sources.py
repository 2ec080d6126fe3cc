"""Where a source checkpoint lives: a local folder, or a Hugging Face repo id.

A Hub source is opened in one of two ways (see hub.py, hub_checkpoint.py, download.py):

* ranges (the default): the small files into the standard Hugging Face cache, the shards'
  headers into sparse files of the gslice range cache; the data ranges a plan reads are
  fetched later, just before the engine runs (``download.fetch``). Shards that the HF cache
  holds completely are used from there.
* full (``full_download=True``): every file slicing reads, whole, into the HF cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError


@dataclass(frozen=True)
class Source:
    path: Path  # the checkpoint folder the engine opens: shards and their index
    label: str  # what the user typed: a path or a repo id
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None  # the snapshot's commit hash, for a Hub source
    download: str | None = None  # "ranges" or "full" for a Hub source
    remote: "RemoteCheckpoint | None" = None  # noqa: F821 - the Hub source's shards, for download.py
    side_files: Path | None = None  # config.json and tokenizer files, when not beside the shards

    @property
    def files(self) -> Path:
        """Where config.json and the tokenizer and processor files are."""
        return self.side_files or self.path


def resolve_source(
    src: str | os.PathLike, revision: str | None = None, *, full_download: bool = False, weights: bool = True
) -> Source:
    """A local folder wins over a repo id of the same spelling; anything else that looks like
    'owner/name' is looked up on the Hub (or in the cache when offline). ``weights=False``
    (dry runs) never downloads whole shards, even with ``full_download``."""
    path = Path(src).expanduser()
    if path.is_dir():
        if revision is not None:
            raise SourceError(f"--revision {revision} applies to Hub repositories, but {src} is a local folder")
        return Source(path.resolve(), str(src))
    if path.exists():
        raise SourceError(f"source {src} is a file; give the checkpoint folder that holds config.json")
    from . import download, hub, hub_checkpoint

    if isinstance(src, str) and hub.looks_like_repo_id(src):
        rev = revision or "main"
        if full_download and weights:
            rc = hub_checkpoint.open_whole(src, revision)
        else:
            rc = hub_checkpoint.open_remote(src, revision)
        mode = download.FULL if full_download else download.RANGES
        side = rc.snapshot if rc.snapshot != rc.folder else None
        return Source(rc.folder, src, repo_id=src, revision=rev, commit=rc.commit, download=mode, remote=rc, side_files=side)
    raise SourceError(f"source {src} does not exist")
