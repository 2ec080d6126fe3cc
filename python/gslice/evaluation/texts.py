"""The texts an evaluation reads: the user's files (a file, or every file of a folder), or the
small public-domain sample shipped with gslice (data/sample-text/README.md says what it is)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import SourceError

SAMPLE_FILE = "pride-and-prejudice-ch1-3.txt"
SAMPLE_NAME = "gslice's sample (Pride and Prejudice, chapters 1-3)"


@dataclass(frozen=True)
class Text:
    name: str
    text: str
    sha256: str  # of the UTF-8 bytes

    @property
    def bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def _text(name: str, data: bytes, where: str) -> Text:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{where} is not UTF-8 text (byte {e.start}): give text files") from None
    return Text(name, text, hashlib.sha256(data).hexdigest())


def sample_text() -> Text:
    data = resources.files("gslice").joinpath("data", "sample-text", SAMPLE_FILE).read_bytes()
    return _text(SAMPLE_NAME, data, SAMPLE_FILE)


def read_texts(paths: list[str | os.PathLike], option: str = "--text") -> list[Text]:
    """Each path is a text file or a folder, whose regular, non-hidden files are read in name
    order (sub-folders are not entered). None given: the shipped sample. ``option`` names the
    command-line option in messages."""
    if not paths:
        return [sample_text()]
    texts: list[Text] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise SourceError(f"{option} {given}: the folder holds no files")
            texts += [_text(f"{p.name}/{f.name}", f.read_bytes(), str(f)) for f in files]
        elif p.is_file():
            texts.append(_text(p.name, p.read_bytes(), str(p)))
        else:
            raise SourceError(f"{option} {given}: no such file or folder")
    return texts


def describe(texts: list[Text]) -> str:
    """One name for a set of texts, as reports and model cards quote it."""
    if len(texts) == 1:
        return texts[0].name
    return f"{len(texts)} texts ({', '.join(t.name for t in texts[:3])}{', ...' if len(texts) > 3 else ''})"
