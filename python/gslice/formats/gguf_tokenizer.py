"""The tokenizer of a GGUF file, from the source's ``tokenizer.model`` (SentencePiece) and its
special-token files, as llama.cpp's converter writes it for Gemma 3n
(``_set_vocab_sentencepiece``): the gguf package reads the pieces and the special tokens; what
the converter adds on top (added tokens, padding to the text vocabulary) is here."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path

from ..errors import SourceError


def add_tokenizer(w, src: Path, vocab_size: int) -> None:
    """``tokenizer.*`` from ``tokenizer.model`` (SentencePiece) and the special-token files, as
    llama.cpp's converter writes them for Gemma 3n: ``vocab_size`` tokens (pieces past the
    model's own are added tokens or ``[PAD{i}]``), token types and scores, the special tokens,
    the chat template, and no space prefix."""
    import gguf

    tokens, scores, types = sentencepiece_vocab(src, vocab_size)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    with _tokenizer_view(src) as view:
        gguf.SpecialVocab(view, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)


# What gguf's SpecialVocab reads from a model folder (besides tokenizer.json).
_SPECIAL_FILES = ("tokenizer_config.json", "config.json", "chat_template.jinja", "chat_template.json", "additional_chat_templates")


@contextlib.contextmanager
def _tokenizer_view(src: Path):
    """A temporary folder with what SpecialVocab reads from ``src``, tokenizer.json without its
    "model" (the vocabulary and merges: 33 MB of E4B's 33.4, 190 MB of Python objects once
    loaded, none of it read for the special tokens)."""
    with tempfile.TemporaryDirectory(prefix="gslice-tokenizer-") as tmp:
        view = Path(tmp)
        for name in _SPECIAL_FILES:
            if (src / name).exists():
                (view / name).symlink_to((src / name).resolve())
        if (src / "tokenizer.json").is_file():
            (view / "tokenizer.json").write_text(json.dumps(tokenizer_json_without_model(src / "tokenizer.json")))
        yield view


def tokenizer_json_without_model(path: Path) -> dict:
    """The top-level fields of a tokenizer.json except "model", parsed one by one: the model's
    value is stepped over by a scanner that builds no objects."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    out: dict = {}
    i = _ws(text, 0)
    if text[i : i + 1] != "{":
        raise SourceError(f"{path} is not a JSON object")
    i = _ws(text, i + 1)
    while i < len(text) and text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _ws(text, i)
        if text[i : i + 1] != ":":
            raise SourceError(f"{path} is not valid JSON near character {i}")
        i = _ws(text, i + 1)
        if key == "model":
            i = _skip_json_value(text, i)
        else:
            out[key], i = decoder.raw_decode(text, i)
        i = _ws(text, i)
        if text[i : i + 1] == ",":
            i = _ws(text, i + 1)
    return out


_WS = re.compile(r"\s*")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()


def _skip_json_value(text: str, i: int) -> int:
    """The index just past the JSON object or array that starts at ``i``."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text, i):
        c = m.group()
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return m.end()
    raise SourceError("tokenizer.json ends inside its model")


def sentencepiece_vocab(src: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """The converter's ``_create_vocab_sentencepiece``: the model's pieces (read by the gguf
    package), then ``added_tokens.json`` and the ``added_tokens_decoder`` of
    ``tokenizer_config.json``, in a vocabulary of exactly ``vocab_size``."""
    import gguf

    if not (src / "tokenizer.model").is_file():
        raise SourceError(f"GGUF: {src} has no tokenizer.model (the SentencePiece model llama.cpp's Gemma 3n tokenizer is read from)")
    T = gguf.TokenType
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores: list[float] = [-10000.0] * vocab_size
    types: list[int] = [T.UNUSED] * vocab_size
    spm = gguf.SentencePieceVocab.__new__(gguf.SentencePieceVocab)
    spm.sentencepiece_tokenizer = _load_spm(src / "tokenizer.model")
    for i, (text, score, toktype) in enumerate(spm.sentencepiece_tokens()):
        if i >= vocab_size:
            break
        tokens[i], scores[i], types[i] = text, score, toktype
    added = src / "added_tokens.json"
    if added.is_file():
        for piece, i in _read_json(added).items():
            if i < vocab_size:
                tokens[i], scores[i], types[i] = piece.encode(), -1000.0, T.USER_DEFINED
    config = src / "tokenizer_config.json"
    decoder = _read_json(config).get("added_tokens_decoder", {}) if config.is_file() else {}
    for key, data in decoder.items():
        i = int(key)
        if i >= vocab_size:
            continue
        content: str = data["content"]
        if data.get("special") or _looks_special(content):
            types[i] = T.CONTROL
        else:
            content = content.replace("\u2581", " ")  # the converter pre-normalizes user-defined spaces
            types[i] = T.USER_DEFINED
        tokens[i], scores[i] = content.encode(), -1000.0
    return tokens, scores, [int(t) for t in types]


def _looks_special(token: str) -> bool:
    """The converter's ``does_token_look_special``."""
    seems = token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems = seems or (token.startswith("<|") and token.endswith("|>"))
    seems = seems or (token.startswith("<｜") and token.endswith("｜>"))
    seems = seems or (token.startswith("<unused") and token.endswith(">"))
    return seems


def _load_spm(path: Path):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    return sp


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path} cannot be read as JSON: {e}") from None
