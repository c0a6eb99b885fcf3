"""`skiff mcp` driven by the official MCP client (the `mcp` package from PyPI, pinned in
scripts/setup.sh) over stdio and over streamable HTTP (`--listen`), against the session's daemon
and its pool: every tool is listed and called."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from skiff_sdk import Client

from conftest import _free_port, _skiff_bin

mcp = pytest.importorskip("mcp", reason="the mcp package is installed by scripts/setup.sh")
import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402


def _text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def exercise(s: ClientSession, client: Client) -> None:
    """Every tool, on one session."""
    init = await s.initialize()
    assert init.server_info.name == "skiff"
    tools = {t.name: t for t in (await s.list_tools()).tools}
    assert sorted(tools) == sorted(["run_code", "create_sandbox", "list_sandboxes",
                                    "remove_sandbox", "exec", "read_file", "write_file",
                                    "list_files"])
    assert tools["remove_sandbox"].annotations.destructive_hint is True
    assert tools["read_file"].annotations.read_only_hint is True

    r = await s.call_tool("run_code", {"language": "shell", "code": "echo hi; echo no >&2; exit 3"})
    assert r.is_error is True, "a non-zero exit is an error result"
    assert "exit code: 3" in _text(r) and "hi" in _text(r) and "no" in _text(r)
    r = await s.call_tool("run_code", {"language": "shell", "code": "yes x | head -c 100000",
                                       "max_output_bytes": 1000})
    assert "[... 99000 more bytes not shown]" in _text(r)

    made = await s.call_tool("create_sandbox", {})
    name = _text(made).split()[1]
    assert name in _text(await s.call_tool("list_sandboxes", {}))
    w = await s.call_tool("write_file", {"sandbox": name, "path": "/tmp/d/notes.txt",
                                          "content": "from an agent\n"})
    assert w.is_error is False, _text(w)
    r = await s.call_tool("read_file", {"sandbox": name, "path": "/tmp/d/notes.txt"})
    assert _text(r) == "from an agent\n"
    await s.call_tool("write_file", {"sandbox": name, "path": "/tmp/d/long.txt", "content": "y" * 5000})
    r = await s.call_tool("read_file", {"sandbox": name, "path": "/tmp/d/long.txt", "max_bytes": 100})
    assert _text(r) == "y" * 100 + "\n[... 4900 more bytes not shown]"
    listed = _text(await s.call_tool("list_files", {"sandbox": name, "path": "/tmp/d"})).splitlines()
    assert [line.split() for line in listed] == [["file", "5000", "/tmp/d/long.txt"],
                                                 ["file", "14", "/tmp/d/notes.txt"]], listed
    r = await s.call_tool("read_file", {"sandbox": name, "path": "/tmp/d"})
    assert r.is_error is True and "directory" in _text(r)
    r = await s.call_tool("exec", {"sandbox": name, "command": "sleep 30", "timeout_secs": 1})
    assert r.is_error is True and "time limit" in _text(r)
    r = await s.call_tool("read_file", {"sandbox": name, "path": "/nonexistent"})
    assert r.is_error is True
    # Only this session's sandboxes: not the user's other VMs.
    r = await s.call_tool("exec", {"sandbox": "someone-else", "command": "true"})
    assert r.is_error is True and "of this session" in _text(r)
    r = await s.call_tool("remove_sandbox", {"sandbox": name})
    assert r.is_error is False
    assert name not in _text(await s.call_tool("list_sandboxes", {}))
    assert client.request("GET", "/v1/vms") is not None
    names = [v["name"] for v in client.request("GET", "/v1/vms")]
    assert name not in names, "removed from the daemon"


def test_every_tool_is_listed_and_works_on_sandboxes_of_this_session_only(client: Client, pool: str):
    params = StdioServerParameters(command=_skiff_bin(), args=["mcp", "--pool", pool],
                                   env=dict(os.environ, SKIFF_SOCKET=client.socket_path))

    async def session() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await exercise(s, client)

    anyio.run(session)


TOKEN = "mcp_token_0123456789abcdef"
OTHER_TOKEN = "mcp_token_fedcba9876543210"


def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json",
                                                          "accept": "application/json, text/event-stream",
                                                          **headers})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_the_same_tools_over_streamable_http_need_a_token_and_keep_sessions_apart(client: Client, pool: str,
                                                                                  tmp_path):
    tokens = tmp_path / "mcp-tokens"
    tokens.write_text(f"{TOKEN}\n# a second client\n{OTHER_TOKEN}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    refused = subprocess.run([_skiff_bin(), "mcp", "--pool", pool, "--listen", "0.0.0.0:0", "--tokens", str(tokens)],
                             env=dict(os.environ, SKIFF_SOCKET=client.socket_path), capture_output=True, text=True)
    assert refused.returncode != 0 and "loopback" in refused.stderr
    server = subprocess.Popen([_skiff_bin(), "mcp", "--pool", pool, "--listen", f"127.0.0.1:{port}",
                               "--tokens", str(tokens)],
                              env=dict(os.environ, SKIFF_SOCKET=client.socket_path),
                              stderr=subprocess.PIPE, text=True)
    try:
        assert "streamable HTTP" in server.stderr.readline()
        init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                      "clientInfo": {"name": "raw", "version": "0"}}}).encode()
        status, headers, _ = _post(url, init, {})
        assert status == 401 and headers.get("www-authenticate") == "Bearer", "no token"
        status, _, _ = _post(url, init, {"authorization": "Bearer not-a-token-of-the-file"})
        assert status == 401
        status, _, _ = _post(url, init, {"authorization": f"Bearer {TOKEN}", "origin": "https://evil.example"})
        assert status == 403, "a page of another site"
        status, headers, body = _post(url, init, {"authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["result"]["serverInfo"]["name"] == "skiff"
        raw_session = headers["mcp-session-id"]
        listing = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
        status, _, _ = _post(url, listing, {"authorization": f"Bearer {OTHER_TOKEN}", "mcp-session-id": raw_session})
        assert status == 404, "another token's session does not exist for it"
        status, _, _ = _post(url, listing, {"authorization": f"Bearer {TOKEN}"})
        assert status == 400, "no session named"

        made: list[str] = []

        async def session() -> None:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
            async with http:
                async with streamable_http_client(url, http_client=http) as (read, write):
                    async with ClientSession(read, write) as s:
                        await exercise(s, client)
                        kept = await s.call_tool("create_sandbox", {})
                        made.append(_text(kept).split()[1])

        anyio.run(session)
        # Leaving, the client ended its session (DELETE): its sandbox went with it.
        names = [v["name"] for v in client.request("GET", "/v1/vms")]
        assert made and made[0] not in names, "the session's sandboxes are removed when it ends"
    finally:
        server.terminate()
        server.wait(timeout=30)
