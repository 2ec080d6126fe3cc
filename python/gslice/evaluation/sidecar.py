"""Evaluation results of a single-file output (a GGUF file), kept in a file next to it.

A folder output holds its results in its own manifest and model card (record.py). A GGUF file
carries its manifest inside its metadata (``gslice.manifest``), hashed with the whole file:
adding figures there would mean rewriting a file of several GB. So its results go to
``<file>.gslice-eval.json``::

    {"format": "gslice-eval/1", "output": "e2b.gguf", "file_sha256": "<the file's digest>",
     "evaluations": [<the entries a folder's manifest would hold>]}

``file_sha256`` is the digest the GGUF's own manifest records: the results belong to that
file and to no other. A newer file written in its place has another digest, so leftover
results of the file it replaced are recognised as such (``gslice verify`` reports them; the
next recording drops them).

The file is gslice's (data safety, :mod:`gslice.ownership`): a writer refuses to write a GGUF
file next to a file of this name that gslice did not write, replaces one of gslice's only with
``--overwrite``, and removes it once the new GGUF file is in place, since it described the old
one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import ownership
from ..errors import SourceError
from ..jsonfile import read_json

FORMAT = "gslice-eval/1"
SUFFIX = ".gslice-eval.json"


def path_for(output: str | os.PathLike) -> Path:
    """Where the results of the single-file output ``output`` are kept."""
    p = Path(output)
    return p.with_name(p.name + SUFFIX)


def read(path: Path) -> dict:
    """The results file at ``path``, checked; SourceError when it is not one gslice wrote."""
    if path.is_symlink() or not path.is_file():
        raise SourceError(f"{path} is not a regular file: it is not a gslice evaluation file")
    data = read_json(path, "evaluation file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SourceError(f"{path} is not a {FORMAT} file: gslice did not write it")
    if not isinstance(data.get("file_sha256"), str) or not isinstance(data.get("evaluations"), list):
        raise SourceError(f"{path} is not a {FORMAT} file: it has no file_sha256 or no evaluations list")
    return data


def is_gslice_file(path: Path) -> bool:
    """Whether ``path`` holds evaluation results gslice wrote (what --overwrite may replace)."""
    try:
        read(path)
    except Exception:  # noqa: BLE001 - anything that cannot be read as one is not ours
        return False
    return True


def evaluations_of(output: Path, digest: str) -> list[dict]:
    """The results recorded for the file ``output`` whose digest is ``digest``: none when
    there is no results file, or when it describes a file that was replaced since."""
    path = path_for(output)
    if not os.path.lexists(path):
        return []
    data = read(path)
    return data["evaluations"] if data["file_sha256"] == digest else []


def problems(output: Path, digest: str) -> list[str]:
    """What ``gslice verify`` says about the results next to ``output`` (nothing when there are none)."""
    path = path_for(output)
    if not os.path.lexists(path):
        return []
    try:
        data = read(path)
    except SourceError as e:
        return [str(e)]
    if data["file_sha256"] != digest:
        return [f"{path.name} holds the evaluations of another file (sha256 {data['file_sha256'][:12]}..., this file's is "
                f"{digest[:12]}...): a run that replaced {output.name} left it; delete it"]
    return []


def document(output: Path, digest: str, evaluations: list[dict]) -> bytes:
    """The results file of ``output`` (record.py writes it)."""
    data = {"format": FORMAT, "output": output.name, "file_sha256": digest, "evaluations": evaluations}
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


ownership.register_companion(SUFFIX, "its evaluation results", is_gslice_file)
