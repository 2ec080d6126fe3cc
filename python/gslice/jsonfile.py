"""Reading the JSON files gslice is given (config.json, spec files, manifests) strictly: every
way a file can be unusable ends in one line naming the file, never a Python traceback.

Refused: unreadable files, files above :data:`MAX_BYTES`, bytes that are not UTF-8, invalid
JSON, ``NaN`` / ``Infinity`` and numbers too large for a float, integers beyond 64 bits,
absurdly deep nesting, and a key repeated within one object (JSON parsers
disagree on which copy wins).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import GsliceError, SourceError

MAX_BYTES = 64 << 20
MAX_INT_DIGITS = 19  # 2**63 - 1 has 19 digits


class _Refused(ValueError):
    pass


def read_json(path: str | os.PathLike, what: str, error: type[GsliceError] = SourceError) -> Any:
    """The parsed contents of ``path``; ``what`` names the file's role in messages ("spec",
    "config"); ``error`` is the exception class raised."""
    p = Path(path)
    where = f"{what} {p}"
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise error(f"cannot read {where}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{where} is larger than {MAX_BYTES} bytes; it cannot be a {what} file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return parse_json(text, where, error)


def parse_json(text: str, where: str, error: type[GsliceError] = SourceError) -> Any:
    """``text`` parsed under the rules above; ``where`` prefixes every message."""
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as e:
        raise error(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _Refused as e:
        raise error(f"{where}: {e}") from None
    except RecursionError:
        raise error(f"{where} nests arrays or objects too deeply") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _int(token: str) -> int:
    digits = token.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise _Refused(f"the integer {token[:12]}... has {len(digits)} digits; gslice reads integers of up to 64 bits")
    return int(token)


def _float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(f"the number {token[:24]} does not fit in a float")
    return value


def _constant(token: str):
    raise _Refused(f"{token} is not a JSON number")
