"""Exceptions raised by gslice. Every message is one line naming the offending value and the
rule it breaks; the CLI prints it after ``error:`` and exits with status 2."""

from __future__ import annotations


class GsliceError(Exception):
    """Base class: bad input or an environment problem, explained in one line."""

    exit_code = 2


class SpecError(GsliceError):
    """The slicing spec breaks a rule of the architecture (layers, KV sharing, widths)."""


class SourceError(GsliceError):
    """The source is not a usable Gemma 3n checkpoint (config, missing or malformed tensors)."""


class OutputExistsError(GsliceError):
    """The output path exists and replacing it was not asked for."""


class OutputPathError(GsliceError):
    """The output path cannot exist on this system (Windows' reserved names, path length)."""


class DiskFullError(GsliceError):
    """The destination filesystem ran out of space; nothing was left behind."""


class WriteError(GsliceError):
    """The operating system refused a read or write."""


class InternalError(GsliceError):
    """A bug in gslice. The message says so; please report it."""

    exit_code = 1


class HubError(GsliceError):
    """The Hugging Face Hub refused or could not serve a request (access, name, network)."""
