"""Writing evaluation results into a gslice output: a folder's manifest and model card, or the
results file next to a GGUF file.

Folder outputs (Hugging Face, MLX): the manifest is the one file the manifest does not hash, so
the results go there as a list, ``evaluations``, one entry per (texts, windowing, runtime,
source); a new measurement replaces the entry of the same setup. The model card (README.md) is
hashed like every other file, so it is rewritten with a section rendered from that list and its
new size and SHA-256 are written into the manifest: ``gslice verify`` then finds every file as
the manifest describes it, and still reports any later edit. A folder whose manifest lists no
card (a format that writes none) gets the manifest's list only.

Single-file outputs (GGUF): the manifest is inside the file and hashed with it, and rewriting a
file of several GB to add a few figures is out of the question; the same list goes to
``<file>.gslice-eval.json`` next to it (sidecar.py), bound to the file by the digest its
manifest records.

Every figure is worded "measured on <text>, <tokens> tokens, <runtime>", never as a general
quality claim. Only gslice's own outputs are written to, and only when their card is still the
one gslice wrote (its hash matches the manifest): a card the user edited is left alone.

Each file is replaced by a rename (so a card hard-linked into another bulk output is never
changed through the link): the card first, then the manifest. Killed between the two renames,
the folder holds the new card and the old manifest, and ``gslice verify`` reports README.md as
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__
from ..errors import SourceError
from ..manifest import MANIFEST_NAME, read_manifest
from ..units import fmt_bytes
from . import sidecar
from .report import EvalReport, ModelResult, fmt_kl, fmt_threads

CARD = "README.md"
START, END = "<!-- gslice-eval:start -->", "<!-- gslice-eval:end -->"


def check_recordable(output: str | os.PathLike) -> Path:
    """The output, if results can be recorded into it; else one line saying why not."""
    p = Path(output)
    if p.is_file():
        _file_digest(p)
        where = sidecar.path_for(p)
        if os.path.lexists(where) and not sidecar.is_gslice_file(where):
            raise SourceError(f"--record: {where} exists and was not written by gslice; not overwriting it")
        return p
    if p.is_dir() and not (p / MANIFEST_NAME).is_file():
        raise SourceError(f"--record: {p} has no {MANIFEST_NAME}: gslice records results only into outputs it wrote")
    data = read_manifest(p)
    listed = data["files"].get(CARD)
    card = p / CARD
    if listed is None:
        return p
    if not card.is_file():
        raise SourceError(f"--record: {p} has lost its model card ({CARD}, listed in its manifest)")
    if hashlib.sha256(card.read_bytes()).hexdigest() != listed.get("sha256"):
        raise SourceError(f"--record: {card} was changed after gslice wrote it; not overwriting it")
    return p


def _file_digest(path: Path) -> str:
    """The digest a gslice GGUF file's manifest records; one line when it is not gslice's."""
    from ..formats import gguf

    try:
        return gguf.read_manifest(path)[gguf.DIGEST_FIELD]
    except SourceError as e:
        raise SourceError(f"--record: {e}; gslice records results only into outputs it wrote") from None


def entry(report: EvalReport, result: ModelResult) -> dict:
    s, src = result.summary, report.source
    return {
        "measured_on": report.measured_on(result),
        "texts": [{"name": t.name, "sha256": t.sha256, "tokens": t.tokens} for t in report.texts],
        "tokens": report.tokens_scored,
        "context": report.context,
        "stride": report.stride,
        "max_tokens": report.max_tokens,
        "top_k": report.top_k,
        "kl": report.kl_definition,
        "runtime": result.run.runtime,
        "against": {"path": src.path, "runtime": src.run.runtime, "perplexity": src.summary.perplexity},
        "perplexity": s.perplexity,
        "kl_mean": s.kl_mean,
        "kl_median": s.kl_median,
        "kl_p99": s.kl_p99,
        "top1_agreement": s.top1_agreement,
        "tokens_per_second": result.run.tokens_per_second,
        "threads": result.run.threads,
        "peak_rss_bytes": result.run.peak_rss_bytes,
        "measured": result.run.measured,
        "tool": f"gslice {__version__}",
    }


def _setup(e: dict) -> tuple:
    return (tuple(t["sha256"] for t in e["texts"]), e["context"], e["stride"], e["max_tokens"], e["top_k"], e["runtime"], e["against"]["path"])


def record(output: str | os.PathLike, report: EvalReport, result: ModelResult) -> dict:
    """Adds (or replaces) this result in the output's records (see the module docstring);
    returns the entry."""
    p = check_recordable(output)
    new = entry(report, result)
    if p.is_file():
        digest = _file_digest(p)
        _replace(sidecar.path_for(p), sidecar.document(p, digest, _merge(sidecar.evaluations_of(p, digest), new)))
        return new
    data = read_manifest(p)
    data["evaluations"] = _merge(data.get("evaluations", []), new)
    if CARD in data["files"]:
        card = with_section((p / CARD).read_text(encoding="utf-8"), section(data["evaluations"])).encode("utf-8")
        data["files"][CARD] = {"size": len(card), "sha256": hashlib.sha256(card).hexdigest()}
        _replace(p / CARD, card)
    _replace(p / MANIFEST_NAME, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return new


def where(output: str | os.PathLike) -> str:
    """Where :func:`record` puts the results of ``output``, for messages."""
    p = Path(output)
    if p.is_file():
        return str(sidecar.path_for(p))
    return f"{p / MANIFEST_NAME}" + (f" and {p / CARD}" if CARD in read_manifest(p)["files"] else "")


def _merge(evaluations: list[dict], new: dict) -> list[dict]:
    return [e for e in evaluations if _setup(e) != _setup(new)] + [new]


def section(evaluations: list[dict]) -> str:
    lines = [
        START,
        "## Measured on sample text",
        "",
        "Figures of this model on the texts named, in the runtime named, against its source: they describe that",
        "text in that runtime on the machine that measured them, and are not a general quality claim.",
        "",
        "| measured on | context | perplexity (source) | KL(source ‖ slice) mean / median / p99 | top-1 agreement | tokens/s | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in evaluations:
        lines.append(
            f"| {e['measured_on']} | {e['context']} | {e['perplexity']:.3f} ({e['against']['perplexity']:.3f}) | "
            f"{fmt_kl(e['kl_mean'])} / {fmt_kl(e['kl_median'])} / {fmt_kl(e['kl_p99'])} | {100 * e['top1_agreement']:.1f}% | "
            f"{e['tokens_per_second']:.1f}{fmt_threads(e.get('threads'))} | {fmt_bytes(e['peak_rss_bytes'])} |"
        )
    last = evaluations[-1]
    lines += ["", f"KL: {last['kl']}. Context: tokens per window, BOS included. Measured with `gslice eval` ({last['tool']}) "
              f"against `{last['against']['path']}` ({last['against']['runtime']}).", END]
    return "\n".join(lines)


def with_section(card: str, text: str) -> str:
    if START in card and END in card:
        head, rest = card.split(START, 1)
        return head + text + rest.split(END, 1)[1]
    return card.rstrip("\n") + "\n\n" + text + "\n"


def _replace(path: Path, data: bytes) -> None:
    """``path`` now holds ``data``: written to a temporary name, flushed, renamed over it, the
    folder flushed."""
    tmp = path.with_name(f".{path.name}.gslice-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder to flush it
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
