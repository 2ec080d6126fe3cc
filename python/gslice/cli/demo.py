"""`gslice demo`: a verified slice of a tiny built-in checkpoint, no download needed."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from .. import interrupts
from ..progress import ByteProgress
from . import main
from .common import friendly_errors
from .slice import render_report


@main.command("demo")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the files in this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def demo_cmd(keep, as_json):
    """Slice a tiny built-in Gemma 3n checkpoint (E4B layout) with the E2B config and verify it."""
    from ..demo import run_demo  # numpy is needed by the demo only, not by every command

    with tempfile.TemporaryDirectory(prefix="gslice-demo-") as tmp:
        workdir = Path(keep) if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if keep:
            interrupts.set_note(f"{workdir} may hold a partly written demo; `gslice demo --keep {keep}` redoes it")
        with ByteProgress("writing", enabled=not as_json) as bar:
            result = run_demo(workdir, progress=bar)
    if as_json:
        click.echo(json.dumps({**result.report.to_dict(), "verified": result.ok, "problems": list(result.problems)}, indent=2))
    else:
        verdict = (f"all {result.tensors_checked} tensors byte-identical to an independent numpy slice; config checked"
                   if result.ok else f"{len(result.problems)} problems: " + "; ".join(result.problems[:5]))
        click.echo(render_report(result.report, [("verified", verdict)]))
    if not result.ok:
        sys.exit(1)
