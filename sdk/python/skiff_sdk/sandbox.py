"""Sandboxes: ready VMs taken from a warm pool, used, and destroyed."""

from __future__ import annotations

import base64
import json
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from .client import Client
from .errors import (
    CommandFailedError,
    CommandTimeoutError,
    NotFoundError,
    SandboxGoneError,
    SkiffError,
)

Command = Union[str, Sequence[str]]
OutputCallback = Callable[[bytes], None]


def _gone(what: str, e: SkiffError) -> Optional[SandboxGoneError]:
    """The SandboxGoneError `e` stands for, if any: the VM does not exist
    (404), or it is no longer running (409: stopping or stopped, as at the
    end of its time to live; a sandbox is never started again)."""
    if isinstance(e, NotFoundError) or e.status == 409:
        return SandboxGoneError(f"{what} is gone: {e.message}", e.status)
    return None


@dataclass
class CommandResult:
    """What a finished command printed and how it ended."""

    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int
    #: The signal that ended it, if one did.
    signal: Optional[int] = None
    #: Killed because it ran past its time limit.
    timed_out: bool = False

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _argv(cmd: Command) -> List[str]:
    # A string runs through the guest's shell, like a terminal would.
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    argv = list(cmd)
    if not argv:
        raise ValueError("the command is empty")
    return argv


class Files:
    """File operations inside a sandbox, done by the guest's agent (no shell needed): reads and
    writes of any size, listings, stat, mkdir, rename, remove. Paths are guest paths; a
    relative one is under the user's home (root's: /root)."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def _path(self, rest: str, path: str, **query: Any) -> str:
        q = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {"path": path, **query}.items()
                     if v is not None)
        return Client.vm_path(self._sandbox.name, f"/files{rest}?{q}")

    def write(self, path: str, data: Union[bytes, str], mode: Optional[int] = None) -> Dict[str, Any]:
        """Create or replace the file at `path` with `data` (missing directories are made); the
        file is replaced only once all of `data` arrived. Its entry (see `stat`)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        entry = json.loads(self._sandbox.client.raw("PUT", self._path("", path), raw))
        if mode is not None:
            self._sandbox.run(["chmod", f"{mode:o}", "--", entry["path"]], check=True)
            entry["mode"] = mode
        return entry

    def read(self, path: str) -> bytes:
        """The bytes of the file at `path` (NotFoundError if there is none)."""
        return self._sandbox.client.raw("GET", self._path("", path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def entries(self, path: str = "/", depth: int = 1) -> List[Dict[str, Any]]:
        """What the directory `path` holds, `depth` levels down: dicts with name, path, kind
        (file, dir, symlink, other), size, mode, owner, group, modified_ns, target."""
        return self._sandbox.client.request("GET", self._path("/list", path, depth=depth))

    def list(self, path: str = "/") -> List[str]:
        """Names in the directory `path`; directories end with '/'."""
        return [e["name"] + ("/" if e["kind"] == "dir" else "") for e in self.entries(path)]

    def stat(self, path: str) -> Dict[str, Any]:
        """What the item at `path` is (a symlink itself, not its target)."""
        return self._sandbox.client.request("GET", self._path("/info", path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFoundError:
            return False

    def make_dir(self, path: str) -> bool:
        """Make the directory and its missing parents; False if it was there already."""
        try:
            self._sandbox.client.request("POST", Client.vm_path(self._sandbox.name, "/files/mkdir"),
                                         {"path": path})
            return True
        except SkiffError as e:
            if e.status == 409 and "already exists" in e.message:
                return False
            raise

    def rename(self, src: str, dst: str) -> Dict[str, Any]:
        """Move `src` to `dst` (missing parents of `dst` are made); the moved entry."""
        return self._sandbox.client.request("POST", Client.vm_path(self._sandbox.name, "/files/rename"),
                                            {"from": src, "to": dst})

    def remove(self, path: str) -> None:
        """Remove the file or directory and all it holds; a missing one is no error."""
        self._sandbox.client.request("DELETE", self._path("", path))


class Sandbox:
    """One sandbox. Use it as a context manager to destroy it when done::

        with Sandbox.create(pool="py") as sb:
            print(sb.run("python3 -c 'print(6*7)'").stdout)
    """

    def __init__(self, name: str, client: Optional[Client] = None, *, pool: Optional[str] = None,
                 address: Optional[str] = None, expires_at: Optional[int] = None) -> None:
        self.name = name
        self.client = client or Client()
        self.pool = pool
        #: The sandbox's address on its managed network, if it has one.
        self.address = address
        #: When the daemon destroys it (Unix seconds).
        self.expires_at = expires_at
        self.files = Files(self)
        self._killed = False

    @classmethod
    def create(cls, pool: str, timeout: Optional[int] = None, *, wait: float = 60,
               client: Optional[Client] = None) -> "Sandbox":
        """Take a ready sandbox from `pool`; it lives `timeout` seconds (default: the pool's)."""
        client = client or Client()
        body: Dict[str, object] = {"wait_secs": int(wait)}
        if timeout is not None:
            body["ttl_secs"] = int(timeout)
        info = client.request("POST", f"/v1/pools/{quote(pool, safe='')}/take", body)
        return cls(info["vm"], client, pool=info.get("pool"), address=info.get("address"),
                   expires_at=info.get("expires_at"))

    def run(self, cmd: Command, *, env: Optional[Mapping[str, str]] = None,
            workdir: Optional[str] = None, stdin: Union[bytes, str, None] = None,
            timeout: Optional[float] = None, check: bool = False, user: Optional[str] = None,
            on_stdout: Optional[OutputCallback] = None,
            on_stderr: Optional[OutputCallback] = None) -> CommandResult:
        """Run a command and wait for it.

        `cmd` is a shell command line (str) or an argv list; `user` is a guest
        user name, UID or UID:GID (default root). Output is passed
        to `on_stdout`/`on_stderr` as it arrives and collected in the result.
        `timeout` kills the command and its process group and raises
        CommandTimeoutError; `check=True` raises CommandFailedError on a
        non-zero exit code.
        """
        body = self._command_body(cmd, env, workdir, stdin, timeout, user)
        out: List[bytes] = []
        err: List[bytes] = []
        try:
            events = self.client.stream(Client.vm_path(self.name, "/commands"), body)
            for ev in events:
                kind = ev.get("type")
                if kind == "stdout":
                    chunk = base64.b64decode(ev["data"])
                    out.append(chunk)
                    if on_stdout:
                        on_stdout(chunk)
                elif kind == "stderr":
                    chunk = base64.b64decode(ev["data"])
                    err.append(chunk)
                    if on_stderr:
                        on_stderr(chunk)
                elif kind == "exit":
                    result = CommandResult(b"".join(out), b"".join(err), int(ev["exit_code"]),
                                           ev.get("signal"), bool(ev.get("timed_out")))
                    return self._judge(cmd, result, timeout, check)
                elif kind == "error":
                    raise SkiffError(f"sandbox {self.name}: {ev.get('message')}")
        except SkiffError as e:
            gone = _gone(f"sandbox {self.name}", e)
            if gone is None:
                raise
            raise gone from e
        raise SandboxGoneError(f"sandbox {self.name}: the command's stream ended without an exit status")

    @staticmethod
    def _command_body(cmd: Command, env: Optional[Mapping[str, str]], workdir: Optional[str],
                      stdin: Union[bytes, str, None], timeout: Optional[float],
                      user: Optional[str] = None) -> Dict[str, object]:
        body: Dict[str, object] = {"argv": _argv(cmd)}
        if user is not None:
            body["user"] = user
        if env:
            body["env"] = [[k, v] for k, v in env.items()]
        if workdir is not None:
            body["workdir"] = workdir
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            body["stdin"] = base64.b64encode(raw).decode()
        if timeout is not None:
            body["timeout_secs"] = float(timeout)
        return body

    def _judge(self, cmd: Command, result: CommandResult, timeout: Optional[float],
               check: bool) -> CommandResult:
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        if result.timed_out:
            raise CommandTimeoutError(
                f"command {shown!r} in sandbox {self.name} ran past its {timeout} s limit and was killed",
                result,
            )
        if check and result.exit_code != 0:
            raise CommandFailedError(
                f"command {shown!r} in sandbox {self.name} exited with code {result.exit_code}: "
                f"{result.stderr.strip()[-500:]}",
                result,
            )
        return result

    def start(self, cmd: Command, *, env: Optional[Mapping[str, str]] = None,
              workdir: Optional[str] = None, stdin: Union[bytes, str, None] = None,
              timeout: Optional[float] = None, user: Optional[str] = None) -> "CommandHandle":
        """Start a command in the background; its handle (wait, output, kill)."""
        body = self._command_body(cmd, env, workdir, stdin, timeout, user)
        body["background"] = True
        try:
            info = self.client.request("POST", Client.vm_path(self.name, "/commands"), body)
        except SkiffError as e:
            gone = _gone(f"sandbox {self.name}", e)
            if gone is None:
                raise
            raise gone from e
        return CommandHandle(self, info["id"], cmd, timeout)

    def set_timeout(self, seconds: int) -> None:
        """Destroy the sandbox `seconds` from now instead of at its current end."""
        try:
            info = self.client.request("POST", Client.vm_path(self.name, "/ttl"),
                                       {"seconds": int(seconds)})
        except SkiffError as e:
            gone = _gone(f"sandbox {self.name}", e)
            if gone is None:
                raise
            raise gone from e
        self.expires_at = info.get("expires_at")

    def pause(self) -> None:
        """Save the sandbox to disk and free its memory (a pausable pool's
        sandbox); its processes and files come back with `resume()`."""
        self._lifecycle("pause")

    def resume(self) -> None:
        """Bring a paused sandbox back as it was."""
        self._lifecycle("resume")

    def snapshot(self, tag: str) -> str:
        """Save the sandbox's state under `tag` (it runs on); start new
        sandboxes from it with `Sandbox.from_snapshot(tag)`."""
        try:
            self.client.request("POST", Client.vm_path(self.name, "/snapshot"), {"tag": tag})
        except SkiffError as e:
            gone = _gone(f"sandbox {self.name}", e)
            if gone is None:
                raise
            raise gone from e
        return tag

    @classmethod
    def from_snapshot(cls, tag: str, name: Optional[str] = None, *,
                      client: Optional[Client] = None) -> "Sandbox":
        """A new sandbox restored from snapshot `tag`: its processes and
        files, with its own name, address and identity. `kill()` it when
        done (it has no time limit of its own)."""
        client = client or Client()
        body: Dict[str, object] = {} if name is None else {"name": name}
        info = client.request("POST", f"/v1/snapshots/{quote(tag, safe='')}/start", body)
        return cls(info["name"], client)

    @staticmethod
    def remove_snapshot(tag: str, client: Optional[Client] = None) -> None:
        """Remove snapshot `tag` (sandboxes started from it go on)."""
        (client or Client()).request("DELETE", f"/v1/snapshots/{quote(tag, safe='')}")

    def _lifecycle(self, verb: str) -> None:
        try:
            self.client.request("POST", Client.vm_path(self.name, f"/{verb}"))
        except SkiffError as e:
            gone = _gone(f"sandbox {self.name}", e)
            if gone is None:
                raise
            raise gone from e

    def kill(self) -> None:
        """Destroy the sandbox now (never reused). Idempotent."""
        if self._killed:
            return
        try:
            self.client.request("DELETE", Client.vm_path(self.name, "?force=true&volumes=true"))
        except NotFoundError:
            pass
        self._killed = True

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, pool={self.pool!r}, address={self.address!r})"


class CommandHandle:
    """A command running in the background in a sandbox."""

    def __init__(self, sandbox: Sandbox, id: str, cmd: Command, timeout: Optional[float]) -> None:
        self.sandbox = sandbox
        self.id = id
        self._cmd = cmd
        self._timeout = timeout

    def _state(self, wait: Optional[float] = None) -> Dict[str, object]:
        path = Client.vm_path(self.sandbox.name, f"/commands/{quote(self.id, safe='')}")
        if wait:
            path += f"?wait={float(wait)}"
        try:
            return self.sandbox.client.request("GET", path)
        except SkiffError as e:
            gone = _gone(f"command {self.id} in sandbox {self.sandbox.name}", e)
            if gone is None:
                raise
            raise gone from e

    @property
    def running(self) -> bool:
        return bool(self._state()["running"])

    def output(self) -> "tuple[bytes, bytes]":
        """(stdout, stderr) so far."""
        st = self._state()
        return base64.b64decode(str(st["stdout"])), base64.b64decode(str(st["stderr"]))

    def wait(self, timeout: Optional[float] = None, check: bool = False) -> CommandResult:
        """Wait for the end (at most `timeout` seconds: then TimeoutError) and return the result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            st = self._state(wait=left or 0.001)
            if not st["running"]:
                if st.get("error"):
                    raise SandboxGoneError(f"command {self.id} in sandbox {self.sandbox.name}: {st['error']}")
                result = CommandResult(base64.b64decode(str(st["stdout"])), base64.b64decode(str(st["stderr"])),
                                       int(st["exit_code"]), st.get("signal"), bool(st.get("timed_out")))  # type: ignore[arg-type]
                return self.sandbox._judge(self._cmd, result, self._timeout, check)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"command {self.id} in sandbox {self.sandbox.name} still runs after {timeout} s")

    def kill(self) -> None:
        """Kill the command and its process group."""
        path = Client.vm_path(self.sandbox.name, f"/commands/{quote(self.id, safe='')}")
        self.sandbox.client.request("DELETE", path)
