"""`gslice eval`: perplexity, KL(source || slice) and top-1 agreement of slices against their
source on a text, each model in the runtime its path calls for, with speed and peak memory."""

from __future__ import annotations

import json

import click

from ..evaluation import DEFAULT_CONTEXT, EvalSettings, check_models, evaluate, render
from ..evaluation.metrics import TOP_K
from ..evaluation.record import check_recordable, record, where
from ..progress import TokenProgress
from .. import interrupts
from . import main
from ..arguments import MAX_THREADS
from .common import StrictInt, friendly_errors


def eval_settings(texts, context, stride, max_tokens, threads=None, cache_dir=None, no_cache=False, top_k=TOP_K,
                  text_option="--text") -> EvalSettings:
    """The settings from the command-line options, checked (also used by `gslice bulk --eval`)."""
    return EvalSettings(texts=list(texts), context=context, stride=stride, max_tokens=max_tokens, top_k=top_k, threads=threads,
                        cache_dir=cache_dir, use_cache=not no_cache, text_option=text_option).checked()


@main.command("eval")
@click.argument("slices", nargs=-1, required=True)
@click.option("--against", "src", required=True, help="The source model (GGUF file, HF or MLX folder, or Hub repo id).")
@click.option("--text", "texts", multiple=True, help="A UTF-8 text file, or a folder of them (repeatable). Default: gslice's small sample (Pride and Prejudice, ch. 1-3).")
@click.option("--context", type=StrictInt(2), default=DEFAULT_CONTEXT, show_default=True, help="Tokens per window, BOS included.")
@click.option("--stride", type=StrictInt(1), default=None, help="Text tokens between window starts (default: context - 1, no overlap).")
@click.option("--max-tokens", type=StrictInt(1), default=None, help="Score only the first N tokens of the texts.")
@click.option("--top-k", type=StrictInt(1, 4096), default=TOP_K, show_default=True, help="Source tokens per position kept for KL (the rest is one bucket).")
@click.option("--threads", type=StrictInt(1, MAX_THREADS), default=None, help="Threads per runtime (default: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Where the source's top-k log-probabilities are kept (default: ~/.cache/gslice/eval).")
@click.option("--no-cache", is_flag=True, help="Run the source again and keep nothing.")
@click.option("--record", "do_record", is_flag=True, help="Write the results into each slice's gslice manifest and model card (a GGUF file: <file>.gslice-eval.json next to it).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
@friendly_errors
def eval_cmd(slices, src, texts, context, stride, max_tokens, top_k, threads, cache_dir, no_cache, do_record, as_json, quiet):
    """Evaluate SLICES against the source model --against on a text.

    Every model runs in the runtime its path calls for: llama.cpp for a GGUF file, mlx-lm for
    an MLX folder, transformers for a Hugging Face folder. The text is tokenized with the
    source's tokenizer and cut into windows of --context tokens (BOS + context - 1 text tokens,
    starts --stride tokens apart; each token scored once). The source's --top-k
    log-probabilities per token are cached, so evaluating more slices later does not run it
    again. KL(source || slice) covers those tokens exactly and the rest as one bucket."""
    settings = eval_settings(texts, context, stride, max_tokens, threads, cache_dir, no_cache, top_k)
    check_models([src, *slices])
    if do_record:
        for s in slices:
            check_recordable(s)
    with TokenProgress(enabled=not (quiet or as_json)) as bar:
        report = evaluate(slices, src, settings, progress=bar)
    if do_record:
        for i, result in enumerate(report.slices):
            record(result.path, report, result)
            interrupts.set_note(f"results recorded into {i + 1} of {len(report.slices)} outputs")
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not quiet:
        click.echo(render(report))
        if do_record:
            click.echo("recorded in " + "; ".join(where(r.path) for r in report.slices))

