"""How good is a slice, on the user's own text, in the runtime it will be deployed with.

    import gslice
    report = gslice.evaluate(["e2b.gguf", "e1.gguf"], against="source.gguf", settings=gslice.EvalSettings(texts=["my.txt"]))
    print(report.slices[0].summary.kl_mean)

Each model runs in the runtime its path calls for (runners/), over the same windows
(windows.py), in a process of its own (run.py). The source runs first - or not at all when its
top-k log-probabilities for these texts and settings are cached (cache.py) - and every slice is
compared with it (metrics.py): N slices cost N runs plus at most one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .. import __version__, interrupts
from ..arguments import bool_arg, callback_arg, int_arg, optional_int, path_arg, threads_arg
from ..errors import ArgumentError, SourceError
from . import runners, sidecar  # noqa: F401 - sidecar: ownership learns the results file kept next to a GGUF output
from .cache import SourceCache, default_dir, fingerprint, tokens_sha256
from .metrics import TOP_K, summarize_slice, summarize_source
from .report import EvalReport, ModelResult, TextInfo, render
from .run import RUNS, Job, RunStats, run_model
from .texts import Text, describe, read_texts
from .windows import check_geometry, make_windows, scored_count, truncate

DEFAULT_CONTEXT = 512

# progress(label, tokens done in this run, tokens of this run)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalSettings:
    texts: Sequence[str | os.PathLike] = ()  # files or folders; none: the shipped sample
    context: int = DEFAULT_CONTEXT
    stride: int | None = None  # None: context - 1 (windows do not overlap)
    max_tokens: int | None = None
    top_k: int = TOP_K
    threads: int | None = None  # None: all cores
    cache_dir: str | os.PathLike | None = None  # None: ~/.cache/gslice/eval
    use_cache: bool = True
    isolate: bool = True  # each model in its own process (peak RSS is then its own)
    text_option: str = "--text"  # how messages name the texts' option
    _texts: tuple[Text, ...] = field(default=(), repr=False)

    def checked(self) -> "EvalSettings":
        """Every check that needs no model: argument types, geometry, limits, the texts (read here)."""
        texts = self.texts
        if isinstance(texts, (str, os.PathLike)):
            texts = [texts]
        for t in texts:
            path_arg(t, "texts")
        int_arg(self.context, "context", 2)
        optional_int(self.stride, "stride", 1)
        optional_int(self.max_tokens, "max_tokens", 1)
        int_arg(self.top_k, "top_k", 1, 4096)
        threads_arg(self.threads)
        bool_arg(self.use_cache, "use_cache")
        bool_arg(self.isolate, "isolate")
        stride = check_geometry(self.context, self.stride)
        read = tuple(read_texts(list(texts), self.text_option))
        return replace(self, texts=tuple(texts), stride=stride, threads=self.threads or os.cpu_count(), _texts=read)


def model_path(given: str | os.PathLike) -> Path:
    """A local file or folder, or a Hub repo id fetched into the Hugging Face cache."""
    p = Path(given).expanduser()
    if p.exists():
        return p.resolve()
    from .. import hub
    from ..sources import resolve_source

    if isinstance(given, str) and hub.looks_like_repo_id(given):
        # a model is run whole: every shard is needed, so no range download
        return resolve_source(given, full_download=True).path
    raise SourceError(f"{given} does not exist")


def check_models(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(path, runtime) of each model, or one line for the first that cannot be evaluated
    (not a model, or its runtime is not installed): before anything runs."""
    out = []
    for given in paths:
        p = model_path(given)
        runtime = runners.runtime_of(p)
        runners.require(runtime, given)
        out.append((p, runtime))
    return out


def evaluate(
    slices: Sequence[str | os.PathLike],
    against: str | os.PathLike,
    settings: EvalSettings = EvalSettings(),
    progress: Progress | None = None,
) -> EvalReport:
    """Every slice against the source ``against`` on the settings' texts (see the module
    docstring); checks everything it can before the first model runs."""
    if isinstance(slices, (str, bytes, os.PathLike)) or not isinstance(slices, Sequence):
        raise ArgumentError(f"slices must be a list of paths, not {type(slices).__name__} {slices!r}")
    paths = [path_arg(p, "slices") for p in slices] + [path_arg(against, "against")]
    callback_arg(progress, "progress")
    if not isinstance(settings, EvalSettings):
        raise ArgumentError(f"settings must be an EvalSettings, not {type(settings).__name__}")
    s = settings if settings._texts else settings.checked()
    (src, src_rt), *models = check_models([paths[-1], *paths[:-1]])
    ids, kept, windows = _windows(s, src, src_rt)
    job = dict(context=s.context, threads=s.threads, windows=windows, top_k=s.top_k)
    cache = _source_cache(s, src, src_rt, ids)
    hit = cache.load() if s.use_cache else None
    if hit:
        ref, meta = hit
        run, vocab = RunStats.from_dict(meta["stats"]), meta["vocab_size"]
    else:
        ref, run, vocab = run_model(Job(src_rt, str(src), reference=None, vocab_size=None, **job),
                                    _bar(progress, f"source {src.name}", windows), s.isolate)
        if s.use_cache:
            cache.save(ref, {"stats": run.to_dict(), "vocab_size": vocab})
            interrupts.set_note(f"the source's figures were cached in {cache.path}; nothing else was written")
    results = []
    for path, rt in models:
        rows, stats, _ = run_model(Job(rt, str(path), reference=ref, vocab_size=vocab, **job), _bar(progress, path.name, windows), s.isolate)
        results.append(ModelResult("slice", str(path), summarize_slice(rows, ref), stats))
    return EvalReport(
        texts=[TextInfo(t.name, t.bytes, t.sha256, len(k)) for t, k in zip(s._texts, kept)],
        text_name=describe(list(s._texts)),
        context=s.context,
        stride=s.stride,
        top_k=s.top_k,
        max_tokens=s.max_tokens,
        windows=len(windows),
        tokens_scored=scored_count(windows),
        source=ModelResult("source", str(src), summarize_source(ref), run, cached=bool(hit)),
        slices=results,
        cache_path=str(cache.path) if s.use_cache else None,
    )


def _windows(s: EvalSettings, src: Path, runtime: str):
    """(token ids per text, those kept by --max-tokens, the windows), with the source's tokenizer."""
    tokenizer = runners.module(runtime).load_tokenizer(src)
    ids = [tokenizer.encode(t.text) for t in s._texts]
    kept = truncate(ids, s.max_tokens)
    windows = make_windows(kept, tokenizer.bos, s.context, s.stride)
    if not windows:
        raise SourceError("the texts hold no token to score")
    return ids, kept, windows


def _source_cache(s: EvalSettings, src: Path, runtime: str, ids) -> SourceCache:
    return SourceCache(
        s.cache_dir or default_dir(),
        src.name,
        {
            "source": fingerprint(src),
            "runtime": runners.version(runtime),
            "tool": f"gslice {__version__}",  # how gslice drives the runtime may change between versions
            "texts": [t.sha256 for t in s._texts],
            "tokens": tokens_sha256(ids),
            "context": s.context,
            "stride": s.stride,
            "max_tokens": s.max_tokens,
            "top_k": s.top_k,
        },
    )


def _bar(progress: Progress | None, label: str, windows) -> Callable[[int], None] | None:
    if progress is None:
        return None
    total, done = sum(len(w.tokens) for w in windows), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress(label, done, total)

    progress(label, 0, total)
    return step


__all__ = ["evaluate", "EvalSettings", "EvalReport", "ModelResult", "check_models", "render", "RUNS", "DEFAULT_CONTEXT"]
