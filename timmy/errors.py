"""Every error timmy raises, each with a ``hint`` that says what to do about it::

    TimmyError                 base of everything below; ``.hint`` names the fix
    ├── PersonaError           unknown persona, bad persona file or field
    ├── ConfigError            a bad argument: rule, executor, description, URL...
    ├── StoreError             the database cannot be opened, read or written
    │   └── OwnershipLost      another swarm took the database over
    ├── ExportError            a directory that is not a readable export (analytics)
    ├── ProtocolError          a wire message that does not decode
    ├── RunnerError            a runner process could not start or keeps dying
    ├── TaskNotFound           no task with that id
    ├── SwarmClosed            the swarm was used after it stopped
    ├── QueueFull              too many unfinished tasks: a post is refused
    ├── NoRunners              a wait that no runner is left to finish
    ├── ExecutorUnavailable    an executor's backend (Ollama...) cannot be reached
    ├── VoiceUnavailable       speech was asked for and cannot be produced
    └── MissingDependency      an optional extra is not installed
"""

from __future__ import annotations


class TimmyError(Exception):
    """Base of every timmy error: the message names what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class PersonaError(TimmyError, ValueError):
    """An unknown persona, or a persona file with a bad field."""


class ConfigError(TimmyError, ValueError):
    """A bad argument: clearing rule, executor, description, URL, limits."""


class StoreError(TimmyError):
    """The database cannot be opened, read or written."""


class OwnershipLost(StoreError):
    """Another swarm took over this swarm's database; this one has stopped writing to it."""


class ExportError(TimmyError):
    """A directory that is not an export: a table file missing, unreadable or wrong."""


class ProtocolError(TimmyError, ValueError):
    """A line on the wire that is not a valid message."""


class RunnerError(TimmyError):
    """A runner process could not be started, or died too often."""


class TaskNotFound(TimmyError, KeyError):
    """No task with the given id."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return TimmyError.__str__(self)


class SwarmClosed(TimmyError, RuntimeError):
    """The swarm was used after it stopped."""


class QueueFull(TimmyError):
    """Posting would take the swarm past its cap on unfinished tasks (``max_queued``)."""


class NoRunners(TimmyError, RuntimeError):
    """Waiting for tasks no runner can take: every agent stopped or failed, or none spawned.

    The tasks stay queued (nothing is lost) and run once a runner is live again.
    """


class WaitTimeout(TimmyError, TimeoutError):
    """A wait ran out of time before its tasks finished."""


class ExecutorUnavailable(TimmyError):
    """An executor's backend (an Ollama server, a model) cannot be used."""


class VoiceUnavailable(TimmyError):
    """Speech was asked for and cannot be produced here."""


class MissingDependency(TimmyError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional module, or raise `MissingDependency` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{module} is not installed ({exc})",
            hint=f'pip install "timmy[{extra}]"',
        ) from exc
