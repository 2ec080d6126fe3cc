"""`gslice verify`: re-check an output folder against its manifest and, optionally, its source.

Exit status: 0 when everything checks out, 1 when problems were found (one line each on
stdout), 2 when the check itself cannot run (no manifest, bad source)."""

from __future__ import annotations

import json
import sys

import click

from ..manifest import HashCache
from ..progress import ByteProgress
from ..sources import resolve_source
from ..verify import output_folders, verify_output
from ..arguments import MAX_THREADS
from . import main
from .common import friendly_errors, StrictInt


@main.command("verify")
@click.argument("outputs", nargs=-1, required=True)
@click.option("--against", "src", default=None, help="Source checkpoint (folder or Hub repo id): re-derive every tensor and compare bytes.")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub source.")
@click.option("--threads", type=StrictInt(1, MAX_THREADS), default=None, help="Worker threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print problems only.")
@friendly_errors
def verify_cmd(outputs, src, revision, threads, as_json, quiet):
    """Check OUTPUTS (output folders, or a bulk run's folder) against their gslice manifests.
    Exit 0: all good; 1: problems found (one line each); 2: cannot check."""
    source = resolve_source(src, revision) if src else None
    cache = HashCache()  # hard-linked bulk shards are hashed once
    results = []
    for path in outputs:
        for folder in output_folders(path):
            phases = ("hashing files", "comparing tensors with the source") if source else ()
            with ByteProgress(f"verifying {folder.name}", enabled=not (quiet or as_json), phases=phases) as bar:
                results.append(verify_output(folder, source, cache=cache, threads=threads, progress=bar))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            for p in r.problems:
                click.echo(f"{r.output}: {p}")
            if r.ok and not quiet:
                detail = f"{r.files_checked} files match their sha256"
                if r.tensors_compared is not None:
                    detail += f"; {r.tensors_compared} tensors byte-identical to {source.label}'s slice"
                click.echo(f"{r.output}: ok ({detail})")
    if not all(r.ok for r in results):
        sys.exit(1)
