"""What an evaluation reports: one row per model (the source first), as a table and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..units import fmt_bytes
from .metrics import Summary
from .run import RunStats


@dataclass(frozen=True)
class ModelResult:
    role: str  # "source" or "slice"
    path: str
    summary: Summary
    run: RunStats
    cached: bool = False  # the source's figures came from the cache (run = the run that made it)

    def to_dict(self) -> dict:
        return {"role": self.role, "path": self.path, **asdict(self.summary), "cached": self.cached, "run": self.run.to_dict()}


@dataclass(frozen=True)
class TextInfo:
    name: str
    bytes: int
    sha256: str
    tokens: int  # after --max-tokens


@dataclass(frozen=True)
class EvalReport:
    texts: list[TextInfo]
    text_name: str  # how the texts are quoted ("measured on ...")
    context: int
    stride: int
    top_k: int
    max_tokens: int | None
    windows: int
    tokens_scored: int
    source: ModelResult
    slices: list[ModelResult]
    cache_path: str | None

    @property
    def kl_definition(self) -> str:
        return (
            f"KL(source || slice) per scored token over the source's top-{self.top_k} tokens plus one bucket for all "
            "others: a lower bound of the full-vocabulary KL"
        )

    def to_dict(self) -> dict:
        return {
            "texts": [asdict(t) for t in self.texts],
            "text_name": self.text_name,
            "context": self.context,
            "stride": self.stride,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "windows": self.windows,
            "tokens_scored": self.tokens_scored,
            "kl": self.kl_definition,
            "cache": self.cache_path,
            "source": self.source.to_dict(),
            "slices": [s.to_dict() for s in self.slices],
        }

    def measured_on(self, result: ModelResult) -> str:
        """The wording every recorded figure carries: never a general quality claim."""
        return f"measured on {self.text_name}, {self.tokens_scored:,} tokens, {result.run.runtime}"


def fmt_kl(x: float) -> str:
    """4 decimals, or 3 significant digits for a KL too small to show in 4 decimals."""
    return f"{x:.2e}" if 0 < abs(x) < 5e-5 else f"{x:.4f}"


def fmt_threads(n: int | None) -> str:
    return "" if not n else f" ({n} thread{'s' if n > 1 else ''})"


HEAD = ("model", "runtime", "perplexity", "KL mean", "KL median", "KL p99", "top-1 agree", "tokens/s", "peak RSS")


def cells(r: ModelResult) -> tuple[str, ...]:
    s = r.summary
    name = r.path + (" (source, cached)" if r.cached else " (source)" if r.role == "source" else "")
    return (
        name,
        r.run.runtime.split(" (")[0],
        f"{s.perplexity:.3f}",
        fmt_kl(s.kl_mean),
        fmt_kl(s.kl_median),
        fmt_kl(s.kl_p99),
        f"{100 * s.top1_agreement:.1f}%",
        f"{r.run.tokens_per_second:.1f}",
        fmt_bytes(r.run.peak_rss_bytes),
    )


def render(report: EvalReport) -> str:
    rows = [cells(r) for r in [report.source, *report.slices]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEAD)]
    fmt = lambda cs: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths))).rstrip()  # noqa: E731
    lines = [fmt(HEAD), *map(fmt, rows), ""]
    geometry = f"context {report.context}, stride {report.stride}, {report.windows} window{'s' if report.windows != 1 else ''}"
    lines.append(f"Measured on {report.text_name}: {report.tokens_scored:,} tokens scored ({geometry}).")
    lines.append(report.kl_definition + "; top-1 agree: the slice's most likely token is the source's.")
    lines.append(
        f"The source puts {100 * report.source.summary.source_tail:.1f}% of its probability (mean per token) outside its "
        f"top-{report.top_k}: the KL leaves out the divergence within that part (a larger --top-k covers more)."
    )
    lines.append("tokens/s: window tokens per second of the runtime's forward passes; peak RSS: the process that ran the model.")
    runtimes = sorted({r.run.runtime for r in [report.source, *report.slices]})
    lines.append(f"Runtimes: {'; '.join(runtimes)}. Figures describe this text in these runtimes, not quality in general.")
    if report.source.cached:
        lines.append(f"Source figures reused from {report.cache_path} (measured {report.source.run.measured}).")
    return "\n".join(lines)
