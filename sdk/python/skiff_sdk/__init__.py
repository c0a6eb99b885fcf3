"""Python SDK for skiff: take sandboxes from warm pools, run commands, move files.

    from skiff_sdk import Sandbox

    with Sandbox.create(pool="py", timeout=300) as sb:
        result = sb.run("echo hello", timeout=10)
        print(result.stdout, result.exit_code)
        sb.files.write("/tmp/x.txt", "data")
"""

from .client import Client, default_socket
from .errors import (
    CommandFailedError,
    CommandTimeoutError,
    DaemonUnavailableError,
    NotFoundError,
    PoolEmptyError,
    SandboxGoneError,
    SkiffError,
)
from .pool import Pool
from .sandbox import CommandHandle, CommandResult, Files, Sandbox

__all__ = [
    "Client",
    "CommandHandle",
    "CommandFailedError",
    "CommandResult",
    "CommandTimeoutError",
    "DaemonUnavailableError",
    "Files",
    "NotFoundError",
    "Pool",
    "PoolEmptyError",
    "Sandbox",
    "SandboxGoneError",
    "SkiffError",
    "default_socket",
]
