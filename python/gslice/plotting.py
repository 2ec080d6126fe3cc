"""The size/quality trade-off as a picture (matplotlib, optional extra ``gslice[plot]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from . import __version__, ownership
from .catalogue import GOOGLE, Preset
from .errors import GsliceError

# Written into the PNG's tEXt metadata, so that a later run recognises the plot as its own.
SOFTWARE = "gslice"
_PNG = b"\x89PNG\r\n\x1a\n"


def plot_presets(catalogue: Sequence[Preset], path: str | os.PathLike) -> None:
    """Effective parameters (computed) against published MMLU for Google's configurations;
    gslice's presets as markers at their size on a separate "quality unmeasured" row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GsliceError("--plot needs matplotlib: pip install 'gslice[plot]'") from None

    official = [p for p in catalogue if p.origin == GOOGLE and p.published_mmlu is not None]
    ours = [p for p in catalogue if p.origin != GOOGLE]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [4, 1]}, constrained_layout=True
    )
    for kind, marker in (("layer", "o"), ("block", "s"), ("", "D")):
        pts = [p for p in official if _granularity(p) == kind]
        if pts:
            top.scatter([p.params.effective / 1e9 for p in pts], [p.published_mmlu for p in pts], marker=marker,
                        label={"layer": "Google, layer-level", "block": "Google, block-level", "": "Google, E4B / E2B"}[kind])
    placed: list[tuple[float, float, bool, int]] = []
    for p in sorted(official, key=lambda p: p.params.effective):
        # layer-level labels above-left, the others below-right (some points coincide); a label
        # close to an earlier one on the same side moves further out
        x, y, above = p.params.effective / 1e9, p.published_mmlu, _granularity(p) == "layer"
        near = [lvl for px, py, side, lvl in placed if side == above and abs(px - x) < 0.3 and abs(py - y) < 0.5]
        level = max(near) + 1 if near else 0
        placed.append((x, y, above, level))
        dy = (5 + 10 * level) if above else -(10 + 10 * level)
        offset = (6, -3) if not _granularity(p) else (-4 if above else 4, dy)
        top.annotate(p.id.removeprefix("google-"), (x, y), textcoords="offset points", xytext=offset,
                     ha="right" if above else "left", fontsize=7)
    top.margins(x=0.08, y=0.08)
    top.set_ylim(top=max(p.published_mmlu for p in official) + 2)
    top.set_ylabel("MMLU, pre-trained (%, published)")
    top.set_title("Gemma 3n slices: effective parameters (computed from shapes) vs published MMLU")
    top.grid(alpha=0.3)
    top.legend(loc="lower right", fontsize=8)
    previous = None
    for p in sorted(ours, key=lambda q: q.params.effective):
        x = p.params.effective / 1e9
        bottom.axvline(x, color="tab:red" if not p.trained_widths else "tab:green", alpha=0.5)
        # a preset within 0.05B of the previous one gets its label on the other side of the line
        side = "left" if previous is not None and x - previous < 0.05 else "right"
        bottom.annotate(p.id.removeprefix("gslice-"), (x, 0.5), rotation=90, fontsize=7, ha=side, va="center")
        previous = x
    bottom.set_yticks([])
    bottom.set_ylabel("gslice\npresets", rotation=0, ha="right", va="center")
    bottom.set_title("quality unmeasured (green: trained widths 8192/16384 only; red: other widths)", fontsize=8)
    bottom.set_xlabel("effective parameters (billions)")
    target = ownership.check_output(path, overwrite=True, what="--plot")  # replaces only a plot gslice drew
    fmt = target.suffix.lstrip(".").lower() or "png"
    tmp = target.parent / f".{target.name}.gslice-partial-{os.getpid()}-0"
    try:
        metadata = {"Software": f"{SOFTWARE} {__version__}"} if fmt == "png" else None
        fig.savefig(tmp, dpi=120, format=fmt, metadata=metadata)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def is_gslice_plot(path: Path) -> bool:
    """A PNG whose tEXt metadata says gslice drew it (read up to its first image data)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG:
                return False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IDAT" or length > 1 << 20:
                    return False
                data = f.read(length + 4)[:length]
                key, _, text = data.partition(b"\0")
                if kind == b"tEXt" and key == b"Software":
                    return text.startswith(SOFTWARE.encode() + b" ")
    except OSError:
        return False


ownership.register_file_format("presets plot (PNG)", is_gslice_plot)


def _granularity(p: Preset) -> str:
    name = p.name.lower()
    return "layer" if "layer-level" in name else "block" if "block-level" in name else ""
