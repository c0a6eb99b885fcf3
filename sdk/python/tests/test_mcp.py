"""`skiff mcp` driven by the official MCP client (the `mcp` package from PyPI, pinned in
scripts/setup.sh) over stdio, against the session's daemon and its pool: every tool is listed
and called."""

from __future__ import annotations

import os

import pytest

from skiff_sdk import Client

from conftest import _skiff_bin

mcp = pytest.importorskip("mcp", reason="the mcp package is installed by scripts/setup.sh")
import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402


def _text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def test_every_tool_is_listed_and_works_on_sandboxes_of_this_session_only(client: Client, pool: str):
    params = StdioServerParameters(command=_skiff_bin(), args=["mcp", "--pool", pool],
                                   env=dict(os.environ, SKIFF_SOCKET=client.socket_path))

    async def session() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
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
                assert "notes.txt" in _text(await s.call_tool("list_files", {"sandbox": name, "path": "/tmp/d"}))
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

    anyio.run(session)
