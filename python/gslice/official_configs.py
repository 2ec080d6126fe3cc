"""Google's published slicing configurations for Gemma 3n E4B, read from CSV.

The Hub dataset ``google/gemma3n-slicing-configs`` (``configs.csv``) and the copy shipped as
package data share one format: a ``name``, ``# Layers``, ``# Effective Params (B)``,
``MMLU PT accuracy`` ("62.30%"), ``FFN Hidden Dims`` (a list of integer expressions such as
``2_048 * 8``, parsed by :mod:`gslice.intexpr`, never ``eval``) and ``Layers Skipped`` (a list,
or empty). A malformed cell is reported in one line naming the file line, the row's name and
the column.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from .errors import SourceError
from .intexpr import ExprError, parse_int_expr

SHIPPED_FILE = "gemma3n-slicing-configs.csv"
HUB_DATASET = "google/gemma3n-slicing-configs"
HUB_FILE = "configs.csv"

NAME, LAYERS, EFFECTIVE, MMLU, FFN, SKIPPED = (
    "name",
    "# Layers",
    "# Effective Params (B)",
    "MMLU PT accuracy",
    "FFN Hidden Dims",
    "Layers Skipped",
)
COLUMNS = (NAME, LAYERS, EFFECTIVE, MMLU, FFN, SKIPPED)

_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$", re.ASCII)
_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*%$", re.ASCII)


@dataclass(frozen=True)
class OfficialConfig:
    """One published row, as published (its figures are Google's, not computed)."""

    name: str
    layers: int
    published_effective_b: float
    published_mmlu: float | None  # percent, pre-trained model
    ffn_dims: tuple[int, ...]
    layers_to_skip: tuple[int, ...]
    line: int  # line of the CSV file the row is on


def shipped_configs() -> tuple[OfficialConfig, ...]:
    """The 16 configurations shipped with gslice (a copy of the Hub dataset's configs.csv)."""
    text = resources.files(__package__).joinpath("data", SHIPPED_FILE).read_text()
    return parse_configs(text, SHIPPED_FILE)


def hub_configs(revision: str | None = None) -> tuple[OfficialConfig, ...]:
    """The live configs.csv of the Hub dataset (huggingface_hub's cache when the Hub cannot be
    reached or ``HF_HUB_OFFLINE`` is set)."""
    from huggingface_hub import hf_hub_download

    from . import hub

    reason = None if hub.offline() else hub.unreachable()
    try:
        path = hf_hub_download(HUB_DATASET, HUB_FILE, repo_type="dataset", revision=revision,
                               local_files_only=hub.offline() or reason is not None)
    except Exception as e:  # any failure to download ends in one line, whatever its type
        if reason is not None:
            raise SourceError(
                f"cannot reach the Hugging Face Hub at {hub.endpoint()} ({reason}), and {HUB_FILE} of the Hub dataset "
                f"{HUB_DATASET} is not in the Hugging Face cache"
            ) from None
        detail = " ".join(str(e).split()) or type(e).__name__
        raise SourceError(f"cannot fetch {HUB_FILE} of the Hub dataset {HUB_DATASET}: {detail}") from None
    return load_configs(path, f"{HUB_DATASET}/{HUB_FILE}")


def load_configs(path: str | Path, label: str | None = None) -> tuple[OfficialConfig, ...]:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    return parse_configs(text, label or str(p))


def parse_configs(text: str, where: str) -> tuple[OfficialConfig, ...]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SourceError(
            f"{where}: missing column {missing[0]!r} (found: {', '.join(repr(h) for h in header) or 'nothing'})"
        )
    rows: list[OfficialConfig] = []
    seen: dict[str, int] = {}
    line = reader.line_num
    for record in reader:
        start, line = line + 1, reader.line_num
        row = _parse_row(record, f"{where} line {start}")
        if row.name in seen:
            raise SourceError(f"{where} line {start}: name {row.name!r} repeats line {seen[row.name]}")
        seen[row.name] = start
        rows.append(replace(row, line=start))
    if not rows:
        raise SourceError(f"{where}: no configurations (only a header)")
    return tuple(rows)


def _parse_row(record: dict, where: str) -> OfficialConfig:
    name = (record.get(NAME) or "").strip()
    if not name:
        raise SourceError(f"{where}: column {NAME!r} is empty")
    at = f"{where} ({name!r}), column"
    if None in record:  # more cells than header columns
        extra = len(record[None])
        raise SourceError(f"{where} ({name!r}): {extra} more cell{'s' if extra > 1 else ''} than the header has columns")
    layers = _cell_int(record[LAYERS], f"{at} {LAYERS!r}")
    widths = _cell_list(record[FFN], f"{at} {FFN!r}")
    if len(widths) != layers:
        raise SourceError(f"{at} {FFN!r}: {len(widths)} widths, but column {LAYERS!r} says {layers}")
    return OfficialConfig(
        name=name,
        layers=layers,
        published_effective_b=_cell_decimal(record[EFFECTIVE], f"{at} {EFFECTIVE!r}"),
        published_mmlu=_cell_percent(record[MMLU], f"{at} {MMLU!r}"),
        ffn_dims=widths,
        layers_to_skip=_cell_list(record[SKIPPED], f"{at} {SKIPPED!r}"),
        line=0,
    )


def _cell_int(cell: str | None, where: str) -> int:
    try:
        return parse_int_expr((cell or "").strip())
    except ExprError as e:
        raise SourceError(f"{where}: {e}") from None


def _cell_list(cell: str | None, where: str) -> tuple[int, ...]:
    """'[2_048 * 8, 2_048 * 4]' -> (16384, 8192); an empty cell or '[]' -> ()."""
    text = (cell or "").strip()
    if not text:
        return ()
    if not (text.startswith("[") and text.endswith("]")):
        raise SourceError(f"{where}: {_short(text)} is not a list: write [a, b, ...]")
    inner = text[1:-1].strip()
    if not inner:
        return ()
    out = []
    for k, item in enumerate(inner.split(",")):
        try:
            out.append(parse_int_expr(item.strip()))
        except ExprError as e:
            raise SourceError(f"{where}: item {k}: {e}") from None
    return tuple(out)


def _cell_decimal(cell: str | None, where: str) -> float:
    text = (cell or "").strip()
    if not _DECIMAL.match(text):
        raise SourceError(f"{where}: {text!r} is not a decimal number of billions (such as 1.91)")
    return float(text)


def _cell_percent(cell: str | None, where: str) -> float | None:
    text = (cell or "").strip()
    if not text:
        return None
    m = _PERCENT.match(text)
    if not m:
        raise SourceError(f"{where}: {text!r} is not a percentage (such as 62.30%)")
    return float(m.group(1))


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
