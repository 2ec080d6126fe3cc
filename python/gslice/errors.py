"""Exceptions raised by gslice. Every message is one line naming the offending value and the
rule it breaks; the CLI prints it after ``error:`` and exits with status 2.

Every error is a :class:`GsliceError`. An interruption (SIGINT, or SIGTERM while gslice writes)
raises :class:`Interrupted`, a ``KeyboardInterrupt`` like Ctrl-C in any Python code, so that an
``except Exception`` meant for errors does not swallow it; its message says what is on disk."""

from __future__ import annotations

import signal


class GsliceError(Exception):
    """Base class: bad input or an environment problem, explained in one line."""

    exit_code = 2


class ArgumentError(GsliceError):
    """An argument of a public function has the wrong type or an impossible value; the message
    names the argument."""


class SpecError(GsliceError):
    """The slicing spec breaks a rule of the architecture (layers, KV sharing, widths)."""


class SourceError(GsliceError):
    """The source is not a usable Gemma 3n checkpoint (config, missing or malformed tensors)."""


class OutputExistsError(GsliceError):
    """The output path exists and replacing it was not asked for."""


class OutputPathError(GsliceError):
    """The output path cannot exist on this system (Windows' reserved names, path length)."""


class ProtectedPathError(OutputExistsError):
    """The output path names something gslice never replaces: the source or anything in it, the
    current directory or a parent of it, a file or folder gslice did not write, a special file."""


class DiskFullError(GsliceError):
    """The destination filesystem ran out of space; nothing was left behind."""


class WriteError(GsliceError):
    """The operating system refused a read or write."""


class HubError(GsliceError):
    """The Hugging Face Hub refused or could not serve a request (access, name, network)."""


class NothingFitsError(GsliceError):
    """No preset fits the RAM budget."""


class InternalError(GsliceError):
    """A bug in gslice. The message says so; please report it."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped gslice. The message says exactly what exists on disk;
    ``completed`` lists the outputs that were finished before the run stopped."""

    def __init__(self, message: str, signum: int = signal.SIGINT, completed: tuple = ()):
        super().__init__(message)
        self.message = message
        self.signum = int(signum)
        self.completed = tuple(completed)

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process a signal ended."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __str__(self) -> str:
        return self.message
