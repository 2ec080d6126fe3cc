"""`gslice push`: upload an existing output folder (after checking it against its manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import hub, interrupts
from ..errors import SourceError
from ..manifest import MANIFEST_NAME, check_files, read_manifest
from . import main
from .common import file_listing, friendly_errors


@main.command("push")
@click.argument("folder", type=click.Path(file_okay=False))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Print the files that would be uploaded; upload nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@friendly_errors
def push_cmd(folder, repo, private, dry_run, as_json):
    """Upload FOLDER (a gslice output) to the Hub model repo REPO, creating it if needed."""
    out = Path(folder)
    hub.check_repo_id(repo, "REPO")
    data = read_manifest(out)
    problems = check_files(out, data)
    if problems:
        raise SourceError(f"refusing to upload {out}: {problems[0]} ({len(problems)} problem(s); run gslice verify)")
    files = [{"name": n, "bytes": m["size"]} for n, m in sorted(data["files"].items())]
    files.append({"name": MANIFEST_NAME, "bytes": (out / MANIFEST_NAME).stat().st_size})
    url = None
    if not dry_run:
        interrupts.set_note(f"the upload of {out} to {repo} was stopped (the Hub applies an upload as one commit, at its end); "
                            "nothing on disk was changed")
        hub.create_repo(repo, private=private)
        url = hub.upload_folder(out, repo, commit_message="Upload a Gemma 3n slice made with gslice")
    if as_json:
        click.echo(json.dumps({"repo": repo, "private": private, "dry_run": dry_run, "url": url, "files": files}, indent=2))
    else:
        verb = "dry run: would upload" if dry_run else "uploaded"
        click.echo(file_listing(files, f"{verb} {out} to {hub.repo_url(repo)}{' (private)' if private else ''}:"))
