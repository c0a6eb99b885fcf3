"""The official `e2b` SDK (PyPI, pinned in scripts/setup.sh), unchanged, against skiff's
E2B-compatible API: only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY point at the daemon.
Templates are skiff pools; this one boots an image with bash (the SDK runs `/bin/bash -l -c`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
import tempfile
import time
from pathlib import Path

import pytest

from skiff_sdk import Client, Pool

from conftest import E2B_KEY, E2B_OTHER_KEY, _skiff_bin
from e2b_image import bash_image_archive

e2b = pytest.importorskip("e2b", reason="the e2b package is installed by scripts/setup.sh")
from e2b import (  # noqa: E402
    AuthenticationException,
    FileNotFoundException,
    CommandExitException,
    Sandbox,
    SandboxException,
    TimeoutException,
)

TEMPLATE = "e2b"


@pytest.fixture(scope="module")
def template(client: Client, e2b_url: str):
    with tempfile.TemporaryDirectory() as tmp:
        archive = bash_image_archive(Path(tmp), "e2b-bash:1")
        env = dict(os.environ, SKIFF_SOCKET=client.socket_path)
        subprocess.run([_skiff_bin(), "image", "import", str(archive)], env=env, check=True,
                       capture_output=True)
    # Memory for a 50 MiB file in the guest's root, which lives in its memory.
    Pool.create(TEMPLATE, size=2, image="e2b-bash:1", ttl_secs=300, memory_mib=768, client=client)
    deadline = time.monotonic() + 240
    while True:
        p = Pool.get(TEMPLATE, client)
        if p is not None and p.ready >= 1:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the pool did not fill: {p}")
        time.sleep(0.5)
    yield TEMPLATE
    # Its VMs would only slow the tests after these.
    Pool.remove(TEMPLATE, client)


@pytest.fixture
def e2b_env(e2b_url: str, template: str, monkeypatch):
    monkeypatch.setenv("E2B_API_URL", e2b_url)
    monkeypatch.setenv("E2B_SANDBOX_URL", e2b_url)
    monkeypatch.setenv("E2B_API_KEY", E2B_KEY)
    return template


def test_a_command_runs_with_streamed_output_env_cwd_and_exit_codes(e2b_env):
    sbx = Sandbox.create(template=e2b_env, timeout=120, envs={"TEAM": "blue"}, metadata={"job": "t1"})
    try:
        seen = []
        r = sbx.commands.run("echo out; echo err >&2; echo $TEAM $EXTRA; pwd", envs={"EXTRA": "x"},
                             cwd="/tmp", on_stdout=seen.append)
        assert r.exit_code == 0
        assert r.stdout == "out\nblue x\n/tmp\n"
        assert r.stderr == "err\n"
        assert "".join(seen) == r.stdout, "on_stdout saw the output as it came"
        with pytest.raises(CommandExitException) as failed:
            sbx.commands.run("echo partial; exit 7")
        assert failed.value.exit_code == 7
        assert failed.value.stdout == "partial\n"
        # The process's lifetime is the call's timeout: it is killed then.
        start = time.monotonic()
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 30", timeout=3)
        assert time.monotonic() - start < 20
    finally:
        assert sbx.kill() is True


def test_background_commands_take_stdin_are_listed_and_killed(e2b_env):
    sbx = Sandbox.create(template=e2b_env, timeout=120)
    try:
        cat = sbx.commands.run("cat", background=True, stdin=True)
        sbx.commands.send_stdin(cat.pid, "fed through stdin\n")
        sbx.commands.close_stdin(cat.pid)
        assert cat.wait().stdout == "fed through stdin\n"
        # More than one agent frame (1 MiB) of input in one call.
        wc = sbx.commands.run("wc -c", background=True, stdin=True)
        sbx.commands.send_stdin(wc.pid, "x" * (3 << 20))
        sbx.commands.close_stdin(wc.pid)
        assert wc.wait().stdout.strip() == str(3 << 20)
        sleeper = sbx.commands.run("sleep 120", background=True)
        assert sleeper.pid in [p.pid for p in sbx.commands.list()]
        # Another client reaches the same process by its pid.
        again = Sandbox.connect(sbx.sandbox_id)
        assert sleeper.pid in [p.pid for p in again.commands.list()]
        assert again.commands.kill(sleeper.pid) is True
        with pytest.raises(CommandExitException) as killed:
            sleeper.wait()
        assert killed.value.exit_code == -1
        assert "killed" in (killed.value.error or "")
        assert sleeper.pid not in [p.pid for p in sbx.commands.list()]
        assert sbx.commands.kill(sleeper.pid) is False, "gone: nothing to kill"
    finally:
        sbx.kill()


def test_sandboxes_are_listed_connected_extended_and_killed_per_key(e2b_env, e2b_url):
    sbx = Sandbox.create(template=e2b_env, timeout=60, metadata={"suite": "list"})
    try:
        from e2b import SandboxQuery
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "list"})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert listed[0].metadata == {"suite": "list"}
        # One sample, measured in the guest now.
        [metric] = sbx.get_metrics()
        assert 0 <= metric.cpu_used_pct <= 100 and metric.cpu_count >= 1
        assert 0 < metric.mem_used < metric.mem_total <= 768 << 20, "the pool gives 768 MiB"
        assert 0 <= metric.disk_used <= metric.disk_total
        assert abs((metric.timestamp - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 30
        info = sbx.get_info()
        sbx.set_timeout(600)
        assert (sbx.get_info().end_at - info.end_at).total_seconds() > 400
        # Another key sees nothing of it.
        other = Sandbox.list(api_key=E2B_OTHER_KEY).next_items()
        assert sbx.sandbox_id not in [s.sandbox_id for s in other]
        with pytest.raises(SandboxException):
            Sandbox.connect(sbx.sandbox_id, api_key=E2B_OTHER_KEY)
        assert Sandbox.kill(sbx.sandbox_id, api_key=E2B_OTHER_KEY) is False
        assert Sandbox.connect(sbx.sandbox_id).commands.run("echo still").stdout == "still\n"
        # One sandbox's envd token opens no other sandbox.
        other_sbx = Sandbox.create(template=e2b_env, timeout=60)
        try:
            req = urllib.request.Request(
                f"{e2b_url}/process.Process/List", data=b"{}",
                headers={"content-type": "application/json", "e2b-sandbox-id": other_sbx.sandbox_id,
                         "x-access-token": sbx._envd_access_token})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req)
            assert refused.value.code == 401
            assert json.loads(refused.value.read())["code"] == "unauthenticated"
        finally:
            other_sbx.kill()
    finally:
        assert Sandbox.kill(sbx.sandbox_id) is True
    assert Sandbox.kill(sbx.sandbox_id) is False, "killed once"
    assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]


def test_bad_keys_and_templates_get_e2b_errors(e2b_env, monkeypatch):
    with pytest.raises(SandboxException) as unknown:
        Sandbox.create(template="no-such-template")
    assert "no-such-template" in str(unknown.value)
    monkeypatch.setenv("E2B_API_KEY", "wrong_key_0123456789abcdef")
    with pytest.raises(AuthenticationException):
        Sandbox.create(template=e2b_env)


def test_an_image_is_a_template_too_booted_at_the_create(e2b_env):
    # No pool is named after the image the template fixture imported.
    sbx = Sandbox.create(template="e2b-bash:1", timeout=60, metadata={"suite": "image"})
    try:
        assert sbx.sandbox_id.startswith("e2b-bash-1-")
        assert sbx.commands.run("echo from an image").stdout == "from an image\n"
        assert sbx.get_info().template_id == "e2b-bash:1"
    finally:
        assert sbx.kill() is True
    with pytest.raises(SandboxException) as unknown:
        Sandbox.create(template="no-such-image:1")
    assert "pool or an image" in str(unknown.value)


def test_files_are_written_read_listed_moved_watched_and_removed(e2b_env):
    from e2b import FileType
    from e2b.sandbox.filesystem.filesystem import WriteEntry
    sbx = Sandbox.create(template=e2b_env, timeout=300)
    try:
        info = sbx.files.write("/work/notes/a.txt", "first line\n")
        assert (info.path, info.name) == ("/work/notes/a.txt", "a.txt")
        assert sbx.files.read("/work/notes/a.txt") == "first line\n"
        sbx.files.write_files([WriteEntry(path="/work/b.bin", data=b"\x00\x01\x02"),
                               WriteEntry(path="/work/notes/c.txt", data="c")])
        assert bytes(sbx.files.read("/work/b.bin", format="bytes")) == b"\x00\x01\x02"
        names = sorted((e.path, e.type) for e in sbx.files.list("/work", depth=2))
        assert names == [("/work/b.bin", FileType.FILE), ("/work/notes", FileType.DIR),
                         ("/work/notes/a.txt", FileType.FILE), ("/work/notes/c.txt", FileType.FILE)]
        assert [e.name for e in sbx.files.list("/work")] == ["b.bin", "notes"], "depth 1 by default"
        entry = sbx.files.get_info("/work/notes/a.txt")
        assert (entry.size, entry.permissions, entry.owner) == (11, "-rw-r--r--", "root")
        assert sbx.files.make_dir("/work/new/deep") is True
        assert sbx.files.make_dir("/work/new/deep") is False, "it exists"
        moved = sbx.files.rename("/work/notes/c.txt", "/work/elsewhere/c2.txt")
        assert moved.path == "/work/elsewhere/c2.txt"
        assert sbx.files.exists("/work/elsewhere/c2.txt") and not sbx.files.exists("/work/notes/c.txt")
        with pytest.raises(FileNotFoundException):
            sbx.files.read("/work/missing.txt")
        # A watch sees changes made by a command in the guest.
        handle = sbx.files.watch_dir("/work/notes")
        sbx.commands.run("echo x > /work/notes/watched.txt; rm /work/notes/a.txt")
        deadline = time.monotonic() + 10
        events = []
        while time.monotonic() < deadline:
            events += handle.get_new_events()
            if {("watched.txt", "create"), ("a.txt", "remove")} <= {(e.name, e.type.value) for e in events}:
                break
            time.sleep(0.2)
        handle.stop()
        assert ("watched.txt", "create") in {(e.name, e.type.value) for e in events}, events
        assert ("a.txt", "remove") in {(e.name, e.type.value) for e in events}, events
        # A gzip upload (octet-stream, Content-Encoding: gzip) lands inflated.
        sbx.files.write("/tmp/zipped.txt", "zipped line\n" * 10000, gzip=True)
        assert sbx.files.read("/tmp/zipped.txt") == "zipped line\n" * 10000
        # 50 MiB through the agent, both ways, and checked in the guest.
        big = os.urandom(50 << 20)
        sbx.files.write("/tmp/big.bin", big)
        assert bytes(sbx.files.read("/tmp/big.bin", format="bytes")) == big
        digest = sbx.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
        assert digest == hashlib.sha256(big).hexdigest()
        sbx.files.remove("/work")
        assert not sbx.files.exists("/work/b.bin")
        sbx.files.remove("/work")  # already gone: no error
    finally:
        sbx.kill()


def test_the_official_javascript_sdk_does_the_same(e2b_env):
    """The `e2b` npm package (pinned in sdk/js/package.json, installed by scripts/setup.sh)
    runs sdk/js/test/e2b.test.mjs against the same daemon and template."""
    js = Path(__file__).resolve().parents[2] / "js"
    assert (js / "node_modules" / "e2b").is_dir(), "run scripts/setup.sh: it installs sdk/js"
    env = dict(os.environ, E2B_TEMPLATE=e2b_env, E2B_OTHER_KEY=E2B_OTHER_KEY)
    ran = subprocess.run(["node", "--test", "--test-concurrency=1", "--test-reporter=spec", "test/"],
                         cwd=js, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # The spec reporter's summary: every test ran and passed, none skipped.
    summary = dict(line[2:].split(" ", 1) for line in ran.stdout.splitlines()
                   if line.startswith("ℹ ") and line[2:].split(" ", 1)[-1].isdigit())
    assert int(summary["tests"]) >= 4 and summary["pass"] == summary["tests"], ran.stdout
