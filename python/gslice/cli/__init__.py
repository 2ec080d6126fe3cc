"""The `gslice` command line: a thin layer over the public API, one module per command.

Errors print one line after ``error:`` and exit 2; ``--json`` prints a machine-readable report
on stdout (progress bars go to stderr, and only on a terminal).
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gslice")
def main() -> None:
    """Cut smaller models out of Gemma 3n checkpoints (MatFormer slicing), streaming."""


from . import bulk, demo, info, plan, presets, push, recommend, slice, verify  # noqa: E402,F401  (each registers its command on `main`)
