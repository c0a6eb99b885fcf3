"""Exceptions raised by the SDK. Each says what happened, in the daemon's words."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .sandbox import CommandResult


class SkiffError(Exception):
    """Anything the daemon refused or could not do."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class DaemonUnavailableError(SkiffError):
    """No daemon answers on the socket (start one with `skiff daemon`)."""


class NotFoundError(SkiffError):
    """The pool, sandbox or VM does not exist."""


class SandboxGoneError(NotFoundError):
    """The sandbox was destroyed (released, timed out, or its VM died)."""


class PoolEmptyError(SkiffError):
    """The pool had no ready sandbox within the wait."""


class CommandTimeoutError(SkiffError, TimeoutError):
    """A command ran past its time limit and was killed (with its process group).

    ``result`` holds what it printed before that.
    """

    def __init__(self, message: str, result: "CommandResult") -> None:
        super().__init__(message)
        self.result = result


class CommandFailedError(SkiffError):
    """A command run with ``check=True`` exited with a non-zero code."""

    def __init__(self, message: str, result: "CommandResult") -> None:
        super().__init__(message)
        self.result = result
