"""What to cut: the slicing spec, and strict parsing of it from CLI strings and JSON files.

Only types are checked here (an index or width must be an integer, never a float such as
5120.0). Whether the values fit the source architecture is decided in :mod:`gslice.gemma3n`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError


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
        layers_to_skip: Any = (),
        ffn_dims: Any = None,
        audio_layers_to_skip: Any = (),
        drop_vision: bool = False,
        drop_audio: bool = False,
        text_only: bool = False,
    ) -> "SliceSpec":
        """Checks types of values coming from Python callers or JSON."""
        return cls(
            layers_to_skip=int_list(layers_to_skip or (), "layers_to_skip"),
            ffn_dims=_widths(ffn_dims),
            audio_layers_to_skip=int_list(audio_layers_to_skip or (), "audio_layers_to_skip"),
            drop_vision=_flag(drop_vision, "drop_vision") or _flag(text_only, "text_only"),
            drop_audio=_flag(drop_audio, "drop_audio") or _flag(text_only, "text_only"),
        )


_SPEC_KEYS = {
    "layers_to_skip": "layers_to_skip",
    "ffn_dims": "ffn_dims",
    "ffn_hidden_dims": "ffn_dims",
    "audio_layers_to_skip": "audio_layers_to_skip",
    "drop_vision": "drop_vision",
    "drop_audio": "drop_audio",
    "text_only": "text_only",
}
_IGNORED_KEYS = {"name", "description", "comment", "_comment"}


def load_spec_file(path: str | os.PathLike) -> SliceSpec:
    """Reads a JSON spec: ``{"layers_to_skip": [...], "ffn_dims": 8192 | [...]}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise SpecError(f"cannot read spec {p}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"spec {p} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return spec_from_mapping(data, str(p))


def spec_from_mapping(data: Any, where: str) -> SliceSpec:
    if not isinstance(data, dict):
        raise SpecError(f"spec {where} must be a JSON object, not {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _IGNORED_KEYS:
            continue
        if key not in _SPEC_KEYS:
            known = ", ".join(k for k in _SPEC_KEYS if k != "ffn_hidden_dims")
            raise SpecError(f"spec {where}: unknown key {key!r} (known keys: {known})")
        kwargs[_SPEC_KEYS[key]] = value
    return SliceSpec.build(**kwargs)


def parse_index_list(text: str, what: str) -> tuple[int, ...]:
    """'20,21,22' or '20-24' (inclusive) or '' -> a tuple of ints, strictly."""
    out: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        lo, sep, hi = token.partition("-")
        if sep and lo:
            a, b = _parse_int(lo, what), _parse_int(hi, what)
            if b < a:
                raise SpecError(f"{what}: range {token!r} runs backwards")
            out.extend(range(a, b + 1))
        else:
            out.append(_parse_int(token, what))
    return tuple(out)


def parse_ffn_dims(text: str, what: str = "--ffn-dims") -> int | tuple[int, ...]:
    """'8192' (every kept layer) or '8192,4096,...' (one per kept layer)."""
    values = [_parse_int(t.strip(), what) for t in text.split(",") if t.strip()]
    if not values:
        raise SpecError(f"{what}: no width given")
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def _parse_int(token: str, what: str) -> int:
    try:
        return int(token, 10)
    except ValueError:
        raise SpecError(f"{what}: {token!r} is not an integer") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_list(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple, range)):
        raise SpecError(f"{what} must be a list of integers, not {value!r}")
    for i, v in enumerate(value):
        if not _is_int(v):
            raise SpecError(f"{what}[{i}] = {v!r} is not an integer layer index")
    return tuple(value)


def _widths(value: Any) -> int | tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value):
        return value
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"ffn_dims must be an integer or a list of integers, not {value!r}")
    for i, v in enumerate(value):
        if _is_int(v):
            continue
        hint = f" (write {int(v)})" if isinstance(v, float) and v.is_integer() else ""
        raise SpecError(f"ffn_dims[{i}] = {v!r} is not an integer: FFN widths are whole numbers of neurons{hint}")
    return tuple(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, not {value!r}")
    return value
