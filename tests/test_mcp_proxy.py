"""``humanlayer-async mcp-proxy`` run as an MCP client runs it: a real process in front of a
real MCP server (``tests/mcp_upstream.py``), talked to by the MCP SDK's own client."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from humanlayer_async import ApprovalRequest, ConfigurationError, HumanLayer, Status
from humanlayer_async.channels import WebChannel
from humanlayer_async.mcp_proxy import McpProxy, _Bearer, check_setup, default_store_url, serve_http_address
from humanlayer_async.policy import Policy
from humanlayer_async.stores import store_from_url
from humanlayer_async.testing import wait_for_pending

from .durable_helpers import cli_command, run_cli, wait_until
from .mcp_upstream import server as upstream_server

pytestmark = pytest.mark.anyio

UPSTREAM = [sys.executable, str(Path(__file__).with_name("mcp_upstream.py"))]
KEY = "console-key-0123456789"
POLICY = """
default = "always"

[[rules]]
tool = "word_count"
approve = "never"

[[rules]]
tool = "delete_file"
editable = ["path"]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'approvals.db'}"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "proxy.log"


@contextlib.asynccontextmanager
async def proxy(
    log: Path, *options: str, mode: str = "auto", key: str | None = None, url: str | None = None
) -> AsyncIterator[Client]:
    """The MCP SDK's client connected to ``mcp-proxy OPTIONS -- <the test server>`` (or
    ``--upstream-url URL``), which writes its stderr to ``log``."""
    command, *args = cli_command()
    env = {"HUMANLAYER_WEB_TOKEN": key} if key else {}
    upstream = ["--upstream-url", url] if url else ["--", *UPSTREAM]
    params = StdioServerParameters(command=command, args=[*args, "mcp-proxy", *options, *upstream], env=env)
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), cache=None, mode=mode) as client:
            yield client


async def logged(log: Path, event: str, count: int = 1) -> str:
    """The proxy's log once ``event`` appears in it ``count`` times."""

    async def probe() -> str | None:
        text = await anyio.Path(log).read_text()
        return text if text.count(event) >= count else None

    return await wait_until(probe)


async def pending(store: str, count: int) -> list[ApprovalRequest]:
    """The store's pending requests once there are ``count`` of them."""

    async def probe() -> list[ApprovalRequest] | None:
        opened = store_from_url(store, create=False)
        try:
            requests = await opened.list_pending()
        finally:
            await opened.aclose()
        return requests if len(requests) == count else None

    return await wait_until(probe)


async def requested(store: str) -> list[str]:
    """Every request the store was asked to hold, as ``function(path)``."""
    opened = store_from_url(store, create=False)
    try:
        entries = await opened.history()
    finally:
        await opened.aclose()
    return [
        f"{entry.fields['function']}({entry.fields['kwargs']['path']})"
        for entry in entries
        if entry.event == "approval.requested"
    ]


def text(result: types.CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_upstream_is_served_unchanged_and_harmless_calls_run_at_once(
    tmp_path: Path, policy: Path, store: str, log: Path, mode: str
) -> None:
    params = StdioServerParameters(command=UPSTREAM[0], args=UPSTREAM[1:])
    async with Client(params, cache=None, mode=mode) as direct:
        tools, resources, prompts = (
            await direct.list_tools(),
            await direct.list_resources(),
            await direct.list_prompts(),
        )
    async with proxy(log, "--policy", str(policy), "--store", store, mode=mode) as client:
        assert client.server_info is not None and client.server_info.name == "files"
        assert client.instructions == "Files you may count words in, or delete."
        served = await client.list_tools()
        assert [tool.model_dump() for tool in served.tools] == [tool.model_dump() for tool in tools.tools]
        assert {tool.name for tool in served.tools} == {"word_count", "delete_file"}
        assert (await client.list_resources()).resources == resources.resources
        assert (await client.list_prompts()).prompts == prompts.prompts
        read = await client.read_resource("notes://readme")
        assert [getattr(content, "text", None) for content in read.contents] == ["a test server"]
        prompt = await client.get_prompt("tidy", {"folder": "/tmp/x"})
        assert "Delete the temporary files in /tmp/x." in str(prompt.messages[0].content)
        counted = await client.call_tool("word_count", {"text": "three small words"})
        assert (text(counted), counted.is_error) == ("3", False)
        # The upstream's own error comes back as the upstream said it.
        missing = await client.call_tool("word_count", {})
    assert missing.is_error and "text" in text(missing)
    assert await requested(store) == []


async def test_a_gated_call_waits_for_the_web_console_and_runs_with_the_approvers_edit(
    tmp_path: Path, policy: Path, store: str, log: Path
) -> None:
    asked, edited = tmp_path / "asked.txt", tmp_path / "edited.txt"
    asked.write_text("keep me")
    edited.write_text("delete me")
    options = ["--policy", str(policy), "--store", store, "--listen", "127.0.0.1:0"]
    told: list[str | None] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        told.append(message)

    async with proxy(log, *options, key=KEY) as client, anyio.create_task_group() as task_group:
        results: list[types.CallToolResult] = []

        async def call() -> None:
            results.append(
                await client.call_tool("delete_file", {"path": str(asked)}, progress_callback=report)
            )

        task_group.start_soon(call)
        [request] = await pending(store, 1)
        url = re.search(r"web console: (\S+)", await logged(log, "web console:"))
        assert url is not None and request.function == "delete_file"
        assert request.tool == "files/delete_file" and request.kwargs == {"path": str(asked)}
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{url.group(1)}/requests/{request.id}",
                data={"action": "approve", "edit.path": str(edited)},
                headers={"authorization": f"Bearer {KEY}", "accept": "application/json"},
            )
        assert response.status_code == 200, response.text
    [result] = results
    assert (text(result), result.is_error) == (f"deleted {edited}", False)
    assert asked.exists() and not edited.exists()
    assert told[0] == "waiting for a human to approve delete_file"


async def test_a_call_denied_with_the_cli_answers_the_refusal_as_a_tool_error(
    tmp_path: Path, policy: Path, store: str, log: Path
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("data")
    async with proxy(log, "--policy", str(policy), "--store", store) as client:
        async with anyio.create_task_group() as task_group:
            results: list[types.CallToolResult] = []

            async def call() -> None:
                results.append(await client.call_tool("delete_file", {"path": str(target)}))

            task_group.start_soon(call)
            [request] = await pending(store, 1)
            code, _, err = await run_cli(
                "deny", request.id, "--store", store, "--by", "ann", "--reason", "it is precious"
            )
            assert code == 0, err
        [result] = results
        assert result.is_error
        assert text(result) == "A human denied delete_file by ann via cli: it is precious. It did not run."
        assert target.exists()


async def test_concurrent_gated_calls_resolve_independently_and_harmless_ones_never_wait(
    tmp_path: Path, policy: Path, store: str, log: Path
) -> None:
    files = {name: tmp_path / f"{name}.txt" for name in ("first", "second")}
    for path in files.values():
        path.write_text(path.name)
    results: dict[str, types.CallToolResult] = {}
    async with (
        proxy(log, "--policy", str(policy), "--store", store) as client,
        anyio.create_task_group() as task_group,
    ):

        async def call(name: str) -> None:
            results[name] = await client.call_tool("delete_file", {"path": str(files[name])})

        for name in files:
            task_group.start_soon(call, name)
        requests = {request.kwargs["path"]: request for request in await pending(store, 2)}
        counted = await client.call_tool("word_count", {"text": "not kept waiting"})
        assert text(counted) == "3" and not results
        first, second = requests[str(files["first"])], requests[str(files["second"])]
        code, _, err = await run_cli("deny", second.id, "--store", store, "--reason", "no")
        assert code == 0, err
        code, _, err = await run_cli("approve", first.id, "--store", store)
        assert code == 0, err
    assert (text(results["first"]), results["first"].is_error) == (f"deleted {files['first']}", False)
    assert results["second"].is_error and "denied delete_file" in text(results["second"])
    assert not files["first"].exists() and files["second"].exists()


async def test_a_retry_after_the_client_gave_up_takes_over_the_request_or_its_decision(
    tmp_path: Path, policy: Path, store: str, log: Path
) -> None:
    slow, late = tmp_path / "slow.txt", tmp_path / "late.txt"
    slow.write_text("slow")
    late.write_text("late")
    async with proxy(log, "--policy", str(policy), "--store", store) as client:
        # A client that stops waiting cancels its call; the request stays pending.
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(client.call_tool, "delete_file", {"path": str(slow)})
            [request] = await pending(store, 1)
            task_group.cancel_scope.cancel()
        await logged(log, "mcp_proxy.client_gave_up")
        assert [r.id for r in await pending(store, 1)] == [request.id]
        # The same call retried waits for that request (nobody is asked twice) and runs once approved.
        async with anyio.create_task_group() as task_group:
            results: list[types.CallToolResult] = []

            async def retry() -> None:
                results.append(await client.call_tool("delete_file", {"path": str(slow)}))

            task_group.start_soon(retry)
            await logged(log, "mcp_proxy.reattached")
            code, _, err = await run_cli("approve", request.id, "--store", store)
            assert code == 0, err
        assert text(results[0]) == f"deleted {slow}" and not slow.exists()

        # A decision made while nobody waits is kept for the retry, which gets it at once.
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(client.call_tool, "delete_file", {"path": str(late)})
            [request] = await pending(store, 1)
            task_group.cancel_scope.cancel()
        await logged(log, "mcp_proxy.client_gave_up", 2)
        code, _, err = await run_cli(
            "deny", request.id, "--store", store, "--by", "ann", "--reason", "not now"
        )
        assert code == 0, err
        await logged(log, "mcp_proxy.decision_kept")
        refused = await client.call_tool("delete_file", {"path": str(late)})
        assert refused.is_error and text(refused).startswith(
            "A human denied delete_file by ann via cli: not now."
        )
        # Taken once: the next identical call asks again.
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(client.call_tool, "delete_file", {"path": str(late)})
            [again] = await pending(store, 1)
            assert again.id != request.id
            task_group.cancel_scope.cancel()
    assert late.exists()
    assert await requested(store) == [f"delete_file({slow})", f"delete_file({late})", f"delete_file({late})"]
    # The request nobody waited for when the client went away was withdrawn with it.
    opened = store_from_url(store, create=False)
    try:
        withdrawn = await opened.get(again.id)
    finally:
        await opened.aclose()
    assert withdrawn.decision is not None and withdrawn.decision.status is Status.CANCELLED


async def test_a_policy_with_an_unknown_key_stops_the_proxy_naming_the_rule_and_the_key(
    tmp_path: Path, store: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('default = "always"\n\n[[rules]]\ntool = "delete_file"\naprove = "always"\n')
    code, out, err = await run_cli("mcp-proxy", "--policy", str(bad), "--store", store, "--", *UPSTREAM)
    assert (code, out) == (2, "")
    assert "rule 1 ('delete_file'): unknown key 'aprove'" in err


async def test_setups_that_cannot_work_stop_the_proxy_with_a_clear_error(
    tmp_path: Path, policy: Path, store: str
) -> None:
    (tmp_path / "proxy_config.py").write_text(
        "from humanlayer_async import HumanLayer\n"
        "from humanlayer_async.channels import ConsoleChannel\n"
        f"hl = HumanLayer([ConsoleChannel()], store={'sqlite:///' + str(tmp_path / 'a.db')!r}, listen=None)\n"
    )
    code, out, err = await run_cli(
        "mcp-proxy", "--policy", str(policy), "--config", "proxy_config:hl", "--", *UPSTREAM, cwd=tmp_path
    )
    assert (code, out) == (2, "")
    assert "ConsoleChannel" in err and "stdio" in err
    code, _, err = await run_cli(
        "mcp-proxy", "--policy", str(policy), "--serve-http", "0.0.0.0:0", "--", *UPSTREAM, cwd=tmp_path
    )
    assert code == 2 and "--token" in err
    code, _, err = await run_cli(
        "mcp-proxy", "--policy", str(policy), "--store", store, "--", sys.executable, "-c", "pass"
    )
    assert code == 2 and "did not answer: Connection closed" in err and "Traceback" not in err
    code, _, err = await run_cli(
        "mcp-proxy", "--policy", str(policy), "--upstream-url", "http://127.0.0.1:9/mcp", "--", *UPSTREAM
    )
    assert code == 2 and "one of them" in err


async def test_serving_over_http_checks_the_origin_and_relays_to_an_http_upstream(
    tmp_path: Path, policy: Path, store: str, log: Path
) -> None:
    command = [*cli_command(), "mcp-proxy", "--policy", str(policy), "--store", store]
    with (tmp_path / "http.log").open("w") as errlog:
        process = await anyio.open_process(
            [*command, "--serve-http", "127.0.0.1:0", "--", *UPSTREAM], stderr=errlog
        )
        try:
            found = re.search(r"serving MCP at (\S+)", await logged(tmp_path / "http.log", "serving MCP at"))
            assert found is not None
            url = found.group(1)
            async with httpx.AsyncClient() as http:
                elsewhere = await http.post(url, json={}, headers={"origin": "http://evil.example"})
            assert elsewhere.status_code == 403
            # A proxy in front of the HTTP one: tools relayed, harmless calls run.
            async with proxy(log, "--policy", str(policy), "--store", store, url=url) as client:
                assert {tool.name for tool in (await client.list_tools()).tools} == {
                    "word_count",
                    "delete_file",
                }
                assert text(await client.call_tool("word_count", {"text": "over two hops"})) == "3"
        finally:
            process.terminate()
            with anyio.fail_after(15):
                code = await process.wait()
            await process.aclose()
    assert code == 0


def test_the_default_store_is_one_file_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_store_url() == f"sqlite:///{tmp_path}/humanlayer-async/approvals.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_url() == f"sqlite:///{tmp_path}/.local/state/humanlayer-async/approvals.db"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_in_one_process_calls_are_gated_and_a_retry_takes_over_a_request(
    tmp_path: Path, mode: str
) -> None:
    target, other = tmp_path / "target.txt", tmp_path / "other.txt"
    target.write_text("data")
    other.write_text("data")
    hl = HumanLayer([], listen=None)
    async with (
        hl,
        Client(upstream_server, cache=None) as upstream,
        anyio.create_task_group() as asks,
    ):
        proxy = McpProxy(hl, Policy.from_toml(POLICY), upstream.session, name="files", task_group=asks)
        served = proxy.server(upstream.server_capabilities, upstream.instructions)
        async with Client(served, cache=None, mode=mode) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["word_count", "delete_file"]
            assert [r.uri for r in (await client.list_resources()).resources] == ["notes://readme"]
            assert text(await client.call_tool("word_count", {"text": "a b"})) == "2"
            # Given up on, then retried: the retry gets the one request's decision, edits included.
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(client.call_tool, "delete_file", {"path": str(target)})
                [request] = await wait_for_pending(hl)
                task_group.cancel_scope.cancel()
            assert [r.id for r in await hl.pending()] == [request.id]
            async with anyio.create_task_group() as task_group:
                results: list[types.CallToolResult] = []

                async def retry() -> None:
                    results.append(await client.call_tool("delete_file", {"path": str(target)}))

                task_group.start_soon(retry)
                await hl.decide(request.id, True, by="ann", edits={"path": str(other)})
            assert text(results[0]) == f"deleted {other}"
            assert target.exists() and not other.exists() and await hl.pending() == []
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(retry)
                [denied] = await wait_for_pending(hl)
                await hl.decide(denied.id, False, by="ann", comment="no")
            assert text(results[1]) == "A human denied delete_file by ann via api: no. It did not run."
        asks.cancel_scope.cancel()


async def test_what_is_checked_before_anything_starts() -> None:
    with pytest.raises(ConfigurationError, match="--token"):
        serve_http_address("192.0.2.1:8788", None)
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        serve_http_address("8788", None)
    with pytest.raises(ConfigurationError, match="16 characters"):
        serve_http_address("192.0.2.1:8788", "short")
    assert serve_http_address("[::1]:8788", None) == ("::1", 8788)
    assert serve_http_address("0.0.0.0:8788", KEY) == ("0.0.0.0", 8788)
    policy = Policy.from_toml(POLICY + '\n[[rules]]\ntool = "send_*"\nchannels = ["finance"]\n')
    with pytest.raises(
        ConfigurationError, match=r"'send_\*' names channels labelled finance; the proxy has: web"
    ):
        check_setup(HumanLayer([WebChannel(token=KEY)], listen=None), policy, stdio=True)
    check_setup(HumanLayer([WebChannel(token=KEY, label="finance")], listen=None), policy, stdio=True)


async def test_off_loopback_http_clients_need_the_bearer_token() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("served")(scope, receive, send)

    transport = httpx.ASGITransport(app=_Bearer(app, KEY))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
        missing, wrong = (
            await http.post("/mcp"),
            await http.post("/mcp", headers={"authorization": "Bearer x"}),
        )
        right = await http.post("/mcp", headers={"authorization": f"Bearer {KEY}"})
    assert (missing.status_code, wrong.status_code, missing.headers["www-authenticate"]) == (
        401,
        401,
        "Bearer",
    )
    assert (right.status_code, right.text) == (200, "served")
