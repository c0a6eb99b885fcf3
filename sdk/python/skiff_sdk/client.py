"""HTTP/JSON over the daemon's Unix socket, with nothing but the standard library."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Dict, Iterator, Optional
from urllib.parse import quote

from .errors import DaemonUnavailableError, NotFoundError, PoolEmptyError, SkiffError


def default_socket() -> str:
    """Where the daemon listens: $SKIFF_SOCKET, else skiff's default for this user."""
    env = os.environ.get("SKIFF_SOCKET")
    if env:
        return env
    runtime = os.environ.get("SKIFF_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "skiff.sock")
    if os.geteuid() == 0:
        return "/run/skiff/skiff.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "skiff", "skiff.sock")
    return f"/tmp/skiff-{os.geteuid()}/skiff.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("skiff", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError as e:
            sock.close()
            raise DaemonUnavailableError(
                f"cannot reach the skiff daemon at {self._path}: {e.strerror or e}; "
                "start it with `skiff daemon` (or set SKIFF_SOCKET)"
            ) from e
        self.sock = sock


def _error(status: int, body: bytes, path: str) -> SkiffError:
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 404:
        return NotFoundError(message, status)
    if status == 409 and path.endswith("/take"):
        return PoolEmptyError(message, status)
    return SkiffError(message, status)


class Client:
    """A connection to one skiff daemon. Cheap: each call opens its own connection."""

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = 600.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        """One API call; the decoded JSON answer (None for 204)."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status >= 400:
                raise _error(resp.status, data, path)
            return json.loads(data) if data else None
        finally:
            conn.close()

    def raw(self, method: str, path: str, data: Optional[bytes] = None) -> bytes:
        """One API call whose request and answer are bytes (a file's)."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            headers = {"content-type": "application/octet-stream"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            out = resp.read()
            if resp.status >= 400:
                raise _error(resp.status, out, path)
            return out
        finally:
            conn.close()

    def stream(self, path: str, body: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        """POST and yield the newline-delimited JSON events of the answer."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(),
                         headers={"content-type": "application/json"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise _error(resp.status, resp.read(), path)
            for line in resp:
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            conn.close()

    def events(self, vm: Optional[str] = None, action: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """What happens to VMs from now on (`GET /v1/events`), as an iterator of
        dicts with `time`, `vm`, `action` (created, start, booted, stop, halted,
        ended, removed, ...), `state` and `note`. Subscribed when this returns;
        it runs until the caller stops iterating (no read timeout while it waits)."""
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (("vm", vm), ("action", action)) if v)
        path = f"/v1/events?{query}"
        conn = _UnixConnection(self.socket_path, None)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise _error(resp.status, resp.read(), path)
        except BaseException:
            conn.close()
            raise

        def lines() -> Iterator[Dict[str, Any]]:
            try:
                for line in resp:
                    line = line.strip()
                    if line:
                        yield json.loads(line)
            finally:
                conn.close()

        return lines()

    @staticmethod
    def vm_path(name: str, rest: str = "") -> str:
        return f"/v1/vms/{quote(name, safe='')}{rest}"
