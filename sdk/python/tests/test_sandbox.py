"""The SDK against a real daemon booting real VMs."""

from __future__ import annotations

import os
import threading
import time

import pytest

from skiff_sdk import (
    Client,
    CommandFailedError,
    CommandTimeoutError,
    DaemonUnavailableError,
    NotFoundError,
    Pool,
    Sandbox,
    SandboxGoneError,
)


def test_run_gives_stdout_stderr_and_exit_code_and_the_sandbox_goes_after(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        r = sb.run("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
        name = sb.name
    with pytest.raises(NotFoundError):
        client.request("GET", Client.vm_path(name))


def test_env_workdir_and_stdin_reach_the_command(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        r = sb.run(["sh", "-c", 'echo "$GREETING"; pwd; cat'], env={"GREETING": "hi there"},
                   workdir="/tmp", stdin=b"from stdin")
        assert r.stdout == "hi there\n/tmp\nfrom stdin"
        assert r.ok


def test_streaming_callbacks_see_output_as_it_comes(client, pool):
    seen = []
    with Sandbox.create(pool=pool, client=client) as sb:
        r = sb.run("for i in 1 2 3; do echo $i; sleep 0.3; done", on_stdout=seen.append)
    assert b"".join(seen) == b"1\n2\n3\n"
    assert len(seen) >= 2, "output arrived in pieces, while the command ran"
    assert r.stdout == "1\n2\n3\n"


def test_a_timeout_kills_the_whole_process_group_and_says_so(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        start = time.monotonic()
        with pytest.raises(CommandTimeoutError) as info:
            sb.run("echo started; sleep 60 & sleep 60; echo never", timeout=2)
        assert time.monotonic() - start < 20
        assert "ran past its 2 s limit" in str(info.value)
        assert info.value.result.stdout == "started\n"
        assert info.value.result.timed_out
        left = sb.run("ps | grep -c '[s]leep 60'")
        assert left.stdout.strip() == "0", "the background sleep was killed too"


def test_files_round_trip_bytes_and_listings(client, pool):
    blob = os.urandom(1 << 20)
    with Sandbox.create(pool=pool, client=client) as sb:
        sb.files.write("/work/data.bin", blob)
        sb.files.write("/work/notes/readme.txt", "hello\n", mode=0o600)
        assert sb.files.read("/work/data.bin") == blob
        assert sb.files.read_text("/work/notes/readme.txt") == "hello\n"
        assert sorted(sb.files.list("/work")) == ["data.bin", "notes/"]
        assert sb.run(["stat", "-c", "%a", "/work/notes/readme.txt"]).stdout == "600\n"
        assert sb.files.exists("/work/data.bin")
        sb.files.remove("/work/data.bin")
        assert not sb.files.exists("/work/data.bin")
        with pytest.raises(NotFoundError, match="/nope"):
            sb.files.read("/nope")
        # Done by the agent, not a shell: stat, depth, mkdir, rename.
        assert sb.files.stat("/work/notes/readme.txt")["mode"] == 0o600
        assert sb.files.make_dir("/work/a/b") is True
        assert sb.files.make_dir("/work/a/b") is False
        moved = sb.files.rename("/work/notes/readme.txt", "/work/a/b/readme.txt")
        assert (moved["path"], moved["size"]) == ("/work/a/b/readme.txt", 6)
        assert sorted(e["path"] for e in sb.files.entries("/work", depth=3)) == [
            "/work/a", "/work/a/b", "/work/a/b/readme.txt", "/work/notes"]
        sb.files.remove("/work/none")  # missing: no error


def test_check_raises_with_the_exit_code(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        with pytest.raises(CommandFailedError) as info:
            sb.run("echo boom >&2; exit 4", check=True)
        assert info.value.result.exit_code == 4
        assert "exited with code 4: boom" in str(info.value)


def test_a_killed_or_expired_sandbox_is_gone(client, pool):
    sb = Sandbox.create(pool=pool, client=client)
    sb.kill()
    with pytest.raises(SandboxGoneError):
        sb.run("true")
    sb.kill()  # idempotent

    # Stopped but not yet removed (as between the end of its time to live
    # and its removal): gone as well, not a bare conflict.
    sb = Sandbox.create(pool=pool, client=client)
    client.request("POST", Client.vm_path(sb.name, "/stop"))
    with pytest.raises(SandboxGoneError, match="is stopped"):
        sb.run("true")
    sb.kill()

    sb = Sandbox.create(pool=pool, client=client)
    sb.set_timeout(1)
    deadline = time.monotonic() + 30
    while True:
        try:
            sb.run("true")
        except SandboxGoneError:
            break
        assert time.monotonic() < deadline, "the sandbox outlived its time to live"
        time.sleep(0.5)


def test_events_show_a_sandbox_killed(client, pool):
    sb = Sandbox.create(pool=pool, client=client)
    events = client.events(vm=sb.name)  # subscribed from here on
    seen = []

    def watch():
        for e in events:
            seen.append(e["action"])
            if e["action"] == "removed":
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    sb.kill()
    t.join(30)
    assert seen[-1:] == ["removed"], seen
    assert seen[0] == "stop", seen  # rm --force: a shutdown, then the record goes


def test_errors_say_what_happened(client, pool):
    with pytest.raises(NotFoundError, match='no pool named "nope"'):
        Sandbox.create(pool="nope", client=client)
    with pytest.raises(DaemonUnavailableError, match="skiff daemon"):
        Client("/nonexistent/skiff.sock").request("GET", "/v1/version")
    assert Pool.get(pool, client) is not None


def test_background_commands_can_be_read_waited_on_and_killed(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        h = sb.start("echo begun; sleep 1; echo done; exit 5")
        assert h.running
        r = h.wait(timeout=30)
        assert (r.stdout, r.exit_code) == ("begun\ndone\n", 5)
        assert not h.running

        slow = sb.start("echo waiting; sleep 60 & sleep 60")
        deadline = time.monotonic() + 10
        while slow.output()[0] != b"waiting\n":
            assert time.monotonic() < deadline, "no output from the background command"
            time.sleep(0.1)
        with pytest.raises(TimeoutError):
            slow.wait(timeout=0.5)
        slow.kill()
        killed = slow.wait(timeout=15)
        assert killed.signal == 9 and killed.exit_code == 137
        assert sb.run("ps | grep -c '[s]leep 60'").stdout.strip() == "0"

        limited = sb.start("sleep 60", timeout=1)
        with pytest.raises(CommandTimeoutError):
            limited.wait(timeout=20)


def test_commands_run_as_a_guest_user(client, pool):
    with Sandbox.create(pool=pool, client=client) as sb:
        sb.run("echo 'sbx:x:1000:1001:Sandbox:/home/sbx:/bin/sh' >> /etc/passwd", check=True)
        r = sb.run('id -u; id -g; echo "$HOME $USER"', user="sbx")
        assert r.stdout == "1000\n1001\n/home/sbx sbx\n"
        assert sb.run("id -u", user="4242:4243").stdout == "4242\n"
        denied = sb.run("touch /root/x", user="sbx")
        assert denied.exit_code != 0
        missing = sb.run("true", user="nobody-here")
        assert missing.exit_code == 126 and "no user" in missing.stderr


def test_a_pausable_sandbox_pauses_and_resumes_with_its_files_and_processes(client):
    Pool.create("pausable", size=1, ttl_secs=300, pausable=True, client=client)
    try:
        with Sandbox.create(pool="pausable", client=client, wait=240) as sb:
            sb.files.write("/tmp/note.txt", "kept across the pause")
            sb.run("setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &")
            assert "while :; do sleep 1" in sb.run("ps").stdout
            sb.pause()
            info = client.request("GET", Client.vm_path(sb.name))
            assert info["state"] == "paused"
            with pytest.raises(Exception) as refused:
                sb.run("true")
            assert "paused" in str(refused.value)
            sb.resume()
            assert sb.files.read_text("/tmp/note.txt") == "kept across the pause"
            assert "while :; do sleep 1" in sb.run("ps").stdout
            # A new sandbox from a snapshot of this one: its files and
            # processes, under a name of its own.
            sb.snapshot("sdk-base")
            try:
                with Sandbox.from_snapshot("sdk-base", client=client) as clone:
                    assert clone.name != sb.name
                    assert clone.files.read_text("/tmp/note.txt") == "kept across the pause"
                    assert "while :; do sleep 1" in clone.run("ps").stdout
            finally:
                Sandbox.remove_snapshot("sdk-base", client=client)
            assert sb.run("echo still here").stdout == "still here\n"
    finally:
        Pool.remove("pausable", client=client)
