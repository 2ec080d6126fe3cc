"""What to cut: the slicing spec, and strict parsing of it from CLI strings and JSON files.

Only types are checked here (an index or width must be an integer, never a float such as
5120.0). Whether the values fit the source architecture is decided in :mod:`gslice.gemma3n`.
"""

from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arguments import path_arg
from .errors import SpecError
from .jsonfile import read_json


@dataclass(frozen=True)
class SliceSpec:
    """A slicing request. ``ffn_dims`` is one width for every kept layer, one per kept layer,
    or None to keep the source widths."""

    layers_to_skip: tuple[int, ...] = ()
    ffn_dims: int | tuple[int, ...] | None = None
    audio_layers_to_skip: tuple[int, ...] = ()
    drop_vision: bool = False
    drop_audio: bool = False

    @property
    def text_only(self) -> bool:
        return self.drop_vision and self.drop_audio

    def to_json(self) -> dict[str, Any]:
        ffn = list(self.ffn_dims) if isinstance(self.ffn_dims, tuple) else self.ffn_dims
        return {
            "layers_to_skip": list(self.layers_to_skip),
            "ffn_dims": ffn,
            "audio_layers_to_skip": list(self.audio_layers_to_skip),
            "drop_vision": self.drop_vision,
            "drop_audio": self.drop_audio,
        }

    @classmethod
    def build(
        cls,
        layers_to_skip: Any = None,
        ffn_dims: Any = None,
        audio_layers_to_skip: Any = None,
        drop_vision: bool = False,
        drop_audio: bool = False,
        text_only: bool = False,
    ) -> "SliceSpec":
        """Checks types of values coming from Python callers or JSON (None means not given)."""
        return cls(
            layers_to_skip=int_list(layers_to_skip, "layers_to_skip"),
            ffn_dims=_widths(ffn_dims),
            audio_layers_to_skip=int_list(audio_layers_to_skip, "audio_layers_to_skip"),
            drop_vision=_flag(drop_vision, "drop_vision") or _flag(text_only, "text_only"),
            drop_audio=_flag(drop_audio, "drop_audio") or _flag(text_only, "text_only"),
        )


_SPEC_KEYS = {
    "layers_to_skip": "layers_to_skip",
    "ffn_dims": "ffn_dims",
    "ffn_hidden_dims": "ffn_dims",  # the spelling of Google's notebook and the public proposals
    "audio_layers_to_skip": "audio_layers_to_skip",
    "drop_vision": "drop_vision",
    "drop_audio": "drop_audio",
    "text_only": "text_only",
}
_IGNORED_KEYS = {"name", "description", "comment", "_comment"}
# An ASCII integer: Python's int() also takes '١', '２０', '1_0' and surrounding spaces.
_INT = re.compile(r"-?[0-9]+", re.ASCII)
MAX_INT_DIGITS = 18


def load_spec_file(path: str | os.PathLike) -> SliceSpec:
    """Reads a JSON spec: ``{"layers_to_skip": [...], "ffn_dims": 8192 | [...]}``."""
    p = Path(path_arg(path, "path"))
    return spec_from_mapping(read_json(p, "spec", SpecError), f"{p}")


def spec_from_mapping(data: Any, where: str) -> SliceSpec:
    """A spec from a JSON object: known keys only (one spelling each), values of the right JSON
    types (null means not given, as None does in Python), at least one key that says what to cut."""
    if not isinstance(data, dict):
        raise SpecError(f"spec {where} must be a JSON object, not {_json_type(data)}")
    kwargs: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        if key in _IGNORED_KEYS:
            continue
        if key not in _SPEC_KEYS:
            known = ", ".join(k for k in _SPEC_KEYS if k != "ffn_hidden_dims")
            raise SpecError(f"spec {where}: unknown key {key!r} (known keys: {known})")
        field = _SPEC_KEYS[key]
        if field in given:
            raise SpecError(f"spec {where}: {given[field]!r} and {key!r} are two spellings of one key; give one")
        given[field] = key
        kwargs[field] = value
    if not kwargs:
        known = ", ".join(k for k in _SPEC_KEYS if k != "ffn_hidden_dims")
        raise SpecError(f"spec {where} has none of the keys {known}: it says nothing to cut")
    return SliceSpec.build(**kwargs)


def parse_index_list(text: str, what: str) -> tuple[int, ...]:
    """'20,21,22' or '20-24' (inclusive) or '' -> a tuple of ints, strictly."""
    out: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        lo, sep, hi = token.partition("-")
        if sep and lo:
            a, b = parse_int(lo, what), parse_int(hi, what)
            if b < a:
                raise SpecError(f"{what}: range {token!r} runs backwards")
            if b - a >= 1 << 16:
                raise SpecError(f"{what}: range {token!r} spans {b - a + 1} indices; no Gemma 3n has that many layers")
            out.extend(range(a, b + 1))
        else:
            out.append(parse_int(token, what))
    return tuple(out)


def parse_ffn_dims(text: str, what: str = "--ffn-dims") -> int | tuple[int, ...]:
    """'8192' (every kept layer) or '8192,4096,...' (one per kept layer)."""
    values = [parse_int(t.strip(), what) for t in text.split(",") if t.strip()]
    if not values:
        raise SpecError(f"{what}: no width given")
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def parse_int(token: str, what: str) -> int:
    """A whole number in ASCII digits, optionally negative (so that '-1' is reported as out of
    range rather than as not a number); nothing else that Python's int() would take."""
    if not _INT.fullmatch(token):
        raise SpecError(f"{what}: {token!r} is not an integer (ASCII digits only)")
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise SpecError(f"{what}: {token[:12]}... has {len(token.lstrip('-'))} digits; no index or width is that large")
    return int(token)


def _is_int(v: Any) -> bool:
    """An integer (numpy's too); bool and float are not."""
    return not isinstance(v, bool) and hasattr(v, "__index__")


def _is_list(v: Any) -> bool:
    """A list, tuple or range, or a one-dimensional array (numpy's)."""
    return isinstance(v, (list, tuple, range)) or getattr(v, "ndim", None) == 1


def int_list(value: Any, what: str) -> tuple[int, ...]:
    """A list of integers (numpy integers count as integers)."""
    if value is None:
        return ()
    if not _is_list(value):
        raise SpecError(f"{what} must be a list of integers, not {_shown(value)}")
    for i, v in enumerate(value):
        if not _is_int(v):
            raise SpecError(f"{what}[{i}] = {v!r} is not an integer layer index")
    return tuple(operator.index(v) for v in value)


def _widths(value: Any) -> int | tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value):
        return operator.index(value)
    if not _is_list(value):
        raise SpecError(f"ffn_dims must be an integer or a list of integers, not {_shown(value)}")
    for i, v in enumerate(value):
        if _is_int(v):
            continue
        hint = f" (write {int(v)})" if isinstance(v, float) and v.is_integer() else ""
        raise SpecError(f"ffn_dims[{i}] = {v!r} is not an integer: FFN widths are whole numbers of neurons{hint}")
    return tuple(operator.index(v) for v in value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(type(value), type(value).__name__)
