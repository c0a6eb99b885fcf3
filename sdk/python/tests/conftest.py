"""A real `skiff daemon` on temporary directories, and a warm pool in it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from skiff_sdk import Client, Pool

REPO = Path(__file__).resolve().parents[3]

#: The running daemon's directory, for the report of a failed test.
_WORK: list = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the daemon's log."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and _WORK:
        log = Path(_WORK[0]) / "daemon.log"
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        report.sections.append(("daemon log", text[-20000:]))


def _skiff_bin() -> str:
    path = os.environ.get("SKIFF_BIN") or str(REPO / "target" / "debug" / "skiff")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no skiff binary at {path}: build it with `cargo build -p skiff` or set SKIFF_BIN")
    return path


def _kill_under(runtime: str) -> None:
    """Kill every process whose command line mentions the runtime directory (the VMs)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if runtime.encode() in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


#: API keys of the E2B-compatible listener, and its port.
E2B_KEY = "e2b_test_key_0123456789abcdef"
E2B_OTHER_KEY = "e2b_other_key_fedcba9876543210"
_E2B_PORT: list = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    work = tempfile.mkdtemp(prefix="skiff-sdk-")
    env = dict(os.environ,
               SKIFF_SOCKET=f"{work}/skiff.sock",
               SKIFF_STATE_DIR=f"{work}/state",
               SKIFF_RUNTIME_DIR=f"{work}/run")
    _WORK[:] = [work]
    log = open(f"{work}/daemon.log", "wb")
    # The E2B-compatible API too, with two keys (two owners).
    Path(f"{work}/e2b-keys").write_text(f"{E2B_KEY}\n# another team\n{E2B_OTHER_KEY}\n")
    _E2B_PORT[:] = [_free_port()]
    daemon = subprocess.Popen([_skiff_bin(), "daemon",
                               "--e2b-listen", f"127.0.0.1:{_E2B_PORT[0]}",
                               "--e2b-keys", f"{work}/e2b-keys"],
                              env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 20
    # Up means answering: the socket file exists a moment before the
    # daemon accepts on it.
    while not _answers(f"{work}/skiff.sock"):
        if time.monotonic() > deadline or daemon.poll() is not None:
            pytest.fail("the daemon did not come up: " + Path(f"{work}/daemon.log").read_text())
        time.sleep(0.05)
    try:
        yield Client(f"{work}/skiff.sock")
    finally:
        daemon.kill()
        daemon.wait()
        _kill_under(f"{work}/run")
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def pool(client: Client) -> str:
    Pool.create("py", size=2, ttl_secs=300, client=client)
    deadline = time.monotonic() + 240
    while True:
        p = Pool.get("py", client)
        if p is not None and p.ready == 2:
            return "py"
        if time.monotonic() > deadline:
            pytest.fail(f"the pool did not fill: {p}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def e2b_url(client: Client) -> str:
    """The daemon's E2B-compatible API, for both of E2B's planes."""
    return f"http://127.0.0.1:{_E2B_PORT[0]}"
