"""Every example runs as a user would run it (``python examples/<name>.py``), and says what it should."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from humanlayer_async.testing import sign_slack_body, slack_block_actions, slack_form_body

from .fake_slack import BOT_TOKEN, FakeSlack

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

INTEGRATIONS = {
    "openai_agents": "agents",
    "langgraph_agent": "langchain",
    "pydantic_ai_agent": "pydantic_ai",
    "fastapi_app": "fastapi",
}

SERVERS = {"slack_bolt_agent"}
"""Examples that serve until stopped: their tests start them, with the settings they need."""


Runs = dict[str, "subprocess.Popen[bytes]"]


def missing_extra(name: str) -> str | None:
    """Why ``name`` cannot run here, or ``None`` when it can."""
    module = INTEGRATIONS.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"examples/{name}.py needs {module!r}: pip install -e '.[integrations]'"


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    """Every runnable example, started at once (each in a fresh interpreter) to keep this fast."""
    started = {
        path.stem: subprocess.Popen(
            [sys.executable, str(path)], cwd=EXAMPLES.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for path in sorted(EXAMPLES.glob("*.py"))
        if missing_extra(path.stem) is None and path.stem not in SERVERS
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


async def run_example(runs: Runs, name: str) -> str:
    """Wait for one example to finish; return its standard output."""
    reason = missing_extra(name)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must install the integrations extra)")
        pytest.skip(reason)
    process = runs[name]
    stdout, stderr = await anyio.to_thread.run_sync(functools.partial(process.communicate, timeout=60))
    out, err = stdout.decode(), stderr.decode()
    assert process.returncode == 0, f"examples/{name}.py exited {process.returncode}:\n{out}\n{err}"
    return out


def test_every_example_is_tested() -> None:
    tested = {
        name.removeprefix("test_")
        for name in globals()
        if name.startswith("test_") and name != "test_every_example_is_tested"
    }
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


async def test_sales_proposals(runs: Runs) -> None:
    out = await run_example(runs, "sales_proposals")
    assert "sent to jane@bigcorp.example, approved by maria (sales lead)" in out
    assert (
        "not sent to joe@startup.example: A human denied send_proposal by maria (sales lead) via auto: "
        "a 45% discount needs the VP of Sales" in out
    )


async def test_invoice_payments(runs: Runs) -> None:
    out = await run_example(runs, "invoice_payments")
    lines = set(out.splitlines())
    assert "paid INV-001: $1,200.00 to ACME Supplies" in lines  # under $5,000: no approval asked
    assert "paid INV-002: $8,400.00 to Globex" in lines
    assert "NOT paid INV-003 ($27,000): no purchase order for this vendor" in lines
    assert "NOT paid INV-004 ($95,000): nobody approved it in time" in lines
    assert len(lines) == 4


async def test_devops(runs: Runs) -> None:
    out = await run_example(runs, "devops")
    assert "scale checkout to 8: checkout scaled to 8 replicas\n" in out
    assert "scale search to 20: A human denied scale_infrastructure by ops-lead via auto: 20 replicas" in out
    # Two channels got the deletion; the first answer (ops-lead's) stood, not the on-call's.
    assert "delete tmp volumes: deleted tmp-vol-1, tmp-vol-2 (approved by ops-lead)" in out
    assert "delete prod database: A human denied delete_resources by ops-lead" in out
    assert "replicas now: {'checkout': 8, 'search': 2}" in out


async def test_finance_ops(runs: Runs) -> None:
    out = await run_example(runs, "finance_ops")
    lines = out.splitlines()
    # Nobody answered the support lead's channel: the escalation's manager decided.
    assert "refunded 180.0 on A-1001 (approved by manager@company.com)" in lines
    assert "paid INV-7 to acme via api" in lines  # the controller approved, with a grant
    assert "paid INV-7 to acme via grant" in lines  # the same call: run without asking
    edited = "wire edited by the CFO: now {'amount': 40000, 'iban': 'DE44 5001 0517 5407 3249 31'}"
    assert f"{edited}, 1 of 2 approvals" in lines
    assert "wired 40000 to DE44 5001 0517 5407 3249 31" in lines
    [grant] = [line for line in lines if line.startswith("grant ")]
    assert "__main__.pay_invoice where {'supplier': 'acme', 'invoice': 'INV-7'}, used 1 time(s)" in grant


async def test_agent_loop(runs: Runs) -> None:
    out = await run_example(runs, "agent_loop")
    assert "40 look-ups done while 6 refunds waited for a human" in out
    assert "model: 4 refunds done; for the 2 refused, a human said: offer a 20% voucher instead" in out


async def test_openai_agents(runs: Runs) -> None:
    out = await run_example(runs, "openai_agents")
    # The SDK built the schema from the function's signature and docstring; gating kept it.
    assert "tool: refund: Refund a customer's order." in out
    assert (
        '"amount": {"description": "The amount to refund, in dollars.", "title": "Amount", "type": "number"}'
        in out
    )
    assert "required: ['order_id', 'amount', 'reason']" in out
    assert "sent for approval: ['A-1001', 'A-1002']" in out
    assert (
        "tool output the model read for A-1002: A human denied refund by support-lead via auto: "
        "refunds over $500 go through the finance team. It did not run." in out
    )
    assert "model: Order A-1001: refunded $120.00 on order A-1001." in out
    assert "Order A-1002 was not refunded: a human said no" in out


async def test_langgraph_agent(runs: Runs) -> None:
    out = await run_example(runs, "langgraph_agent")
    assert (
        'tool: scale_service: {"replicas": {"description": "How many replicas should run.", '
        '"type": "integer"}' in out
    )
    assert (
        '"resource_ids": {"description": "The ids of the resources to delete.", "items": {"type": "string"}'
        in out
    )
    tool_messages = [line for line in out.splitlines() if line.startswith("tool message: ")]
    assert tool_messages == [
        "tool message: checkout now runs 6 replicas",
        "tool message: search now runs 2 replicas",
        "tool message: A human denied delete_resources by ops-lead via auto: "
        "vol-backups holds last night's backups; keep it. It did not run.",
        "tool message: deleted vol-tmp-1",  # the model acted on the refusal: it retried with less
    ]
    # The policy's "when" let the small scale-up run unasked.
    assert "asked ops-lead about: delete_resources, delete_resources, scale_service\n" in out
    assert "model: Done: checkout now runs 6 replicas; search now runs 2 replicas; deleted vol-tmp-1." in out


async def test_pydantic_ai_agent(runs: Runs) -> None:
    out = await run_example(runs, "pydantic_ai_agent")
    assert "tool: transfer_money: Transfer money from the company account." in out
    assert '"amount": {"description": "The amount in dollars.", "type": "number"}' in out
    assert '"required": ["amount", "recipient"]' in out
    assert "tool return (success): sent $250 to Globex" in out
    assert "tool return (success): sent $4,800 to ACME Supplies" in out
    assert (
        "tool return (denied): A human denied transfer_money by treasurer@company.com via auto: "
        "we have no contract with this payee. It did not run." in out
    )
    assert "approvals asked: 2 " in out
    assert "Not paid (1): the treasurer refused" in out


async def test_fastapi_app(runs: Runs) -> None:
    out = await run_example(runs, "fastapi_app")
    assert "GET /humanlayer/healthz -> 200 ok" in out
    assert "refund $40   -> 200 refunded $40.00 on A-17\n" in out
    assert "GET /approvals -> [('refund', {'order_id': 'A-18', 'amount': 450.0})]" in out
    assert "no token approves -> 401 a valid bearer token is required" in out
    assert "forged token approves -> 401 a valid bearer token is required" in out
    # The intern names finance-lead in the query: `by` comes from the token, so it is refused.
    assert "intern approves -> 403 'intern' is not an approver" in out
    assert "finance-lead approves -> 200 {'status': 'approved', 'by': 'finance-lead'}" in out
    assert "refund $450  -> 200 refunded $450.00 on A-18, approved by finance-lead" in out
    assert (
        "refund $9000  -> 403 A human denied refund by finance-lead via api: call the customer first." in out
    )


APP_SECRET = "example-app-signing-secret-0123456789"
REQUESTER, LEAD = "U0REQ", "U0LEAD"
CONVERSATION = "C0CONV"


def example_environment(**settings: str) -> dict[str, str]:
    """This process's environment without its own Slack or server settings, plus ``settings``."""
    own = ("PORT", "HOST", "EXAMPLE_CONVERSATIONS")
    kept = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_") and k not in own}
    return {**kept, **settings}


def app_mention(event_id: str, ts: str, text: str) -> bytes:
    """REQUESTER mentions the bot in CONVERSATION: the body Slack's Events API posts."""
    event = {
        "type": "app_mention",
        "user": REQUESTER,
        "text": text,
        "ts": ts,
        "channel": CONVERSATION,
        "event_ts": ts,
    }
    return json.dumps(
        {
            "type": "event_callback",
            "team_id": "T0TEST",
            "api_app_id": "A0TEST",
            "event": event,
            "event_id": event_id,
            "event_time": int(time.time()),
        }
    ).encode()


async def next_line(stdout: BufferedByteReceiveStream, lines: list[str], prefix: str) -> str:
    """Read the example's output until a line starts with ``prefix``; keep every line in ``lines``."""
    while True:
        lines.append((await stdout.receive_until(b"\n", 65536)).decode())
        if lines[-1].startswith(prefix):
            return lines[-1]


async def says_what_to_set_without_slack_settings(script: list[str]) -> None:
    """Run with nothing configured (as every example runs): it says what to set and exits 0."""
    done = await anyio.run_process(script, cwd=EXAMPLES.parent, env=example_environment(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "SLACK_BOT_TOKEN" in done.stdout.decode() and "docs/channels/slack.md" in done.stdout.decode()


async def test_slack_bolt_agent(tmp_path: Path) -> None:
    script = [sys.executable, str(EXAMPLES / "slack_bolt_agent.py")]
    async with anyio.create_task_group() as tg, FakeSlack() as slack:
        tg.start_soon(says_what_to_set_without_slack_settings, script)
        slack.users = {REQUESTER: "req@example.com", LEAD: "lead@example.com"}
        environment = example_environment(
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=APP_SECRET,
            SLACK_APPROVAL_CHANNEL="C0APPROVALS",
            # The requester may approve refunds, but never their own.
            SLACK_APPROVERS=f"{REQUESTER},lead@example.com",
            SLACK_API_URL=slack.api_url,
            HOST="127.0.0.1",
            PORT="0",
            EXAMPLE_CONVERSATIONS="2",
        )
        with (tmp_path / "stderr").open("wb") as errors:
            process = await anyio.open_process(script, cwd=EXAMPLES.parent, env=environment, stderr=errors)
        assert process.stdout is not None
        stdout, lines = BufferedByteReceiveStream(process.stdout), list[str]()
        try:
            with anyio.fail_after(20):
                url = (await next_line(stdout, lines, "listening on ")).removeprefix("listening on ")
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+/slack/events", url)
                # A 5-second timeout: a mention handler that waited for its turn would never answer.
                async with httpx.AsyncClient(timeout=5) as client:

                    async def post(body: bytes, **headers: str) -> None:
                        signed = {**sign_slack_body(body, APP_SECRET), **headers}
                        assert (await client.post(url, content=body, headers=signed)).status_code == 200

                    async def click(request_id: str, ts: str, user: str) -> None:
                        payload = slack_block_actions(
                            request_id, user=user, channel=CONVERSATION, message_ts=ts, thread_ts="1712.0001"
                        )
                        await post(slack_form_body(payload))

                    json_body = {"Content-Type": "application/json"}
                    refund = app_mention("Ev0001", "1712.0001", "<@U0BOT> refund order 1234 $250")
                    await post(refund, **json_body)
                    await post(refund, **json_body, **{"X-Slack-Retry-Num": "1"})  # resent: no second turn
                    [(ts, asked)] = await slack.wait_for(
                        lambda: [
                            (ts, message)
                            for (channel, ts), message in slack.messages.items()
                            if channel == CONVERSATION and message["thread_ts"] == "1712.0001"
                        ]
                    )
                    [request_id] = [
                        element["value"].split()[0]  # the request id, then the call's fingerprint
                        for block in asked["blocks"]
                        if block["type"] == "actions"
                        for element in block["elements"]
                        if element["action_id"] == "hl_approve"
                    ]

                    # Another conversation is answered while the first waits for its approver.
                    await post(
                        app_mention("Ev0002", "1712.0002", "<@U0BOT> refund order 99 $20"), **json_body
                    )
                    [answer] = await slack.wait_for(lambda: slack.thread(CONVERSATION, "1712.0002"))
                    assert answer["text"] == "Refunded $20.00 on order 99."
                    assert len(slack.thread(CONVERSATION, "1712.0001")) == 1

                    await click(request_id, ts, REQUESTER)
                    [told] = await slack.wait_calls("chat.postEphemeral")
                    assert {key: told.data.get(key) for key in ("channel", "user", "text", "thread_ts")} == {
                        "channel": CONVERSATION,
                        "user": REQUESTER,
                        "text": "you requested this call, so someone else must decide it",
                        "thread_ts": "1712.0001",
                    }
                    await click(request_id, ts, LEAD)
                    # The request, then its outcome and the agent's answer, in either order.
                    thread = await slack.wait_for(
                        lambda: (thread := slack.thread(CONVERSATION, "1712.0001"))[2:] and thread
                    )
                answer, outcome = sorted(message["text"] for message in thread[1:])
                assert answer == "Refunded $250.00 on order 1234."
                assert outcome.startswith(
                    "issue_refund(order_id='1234', amount=250.0): approved by lead@example.com via slack at "
                )
                assert await process.wait() == 0, (tmp_path / "stderr").read_text()
                with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
                    await next_line(stdout, lines, "\0")  # the rest of the output
        finally:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    assert lines == [
        f"listening on {url}",
        "<@U0REQ> in C0CONV/1712.0001: <@U0BOT> refund order 1234 $250",
        "<@U0REQ> in C0CONV/1712.0002: <@U0BOT> refund order 99 $20",
        "answered in C0CONV/1712.0002: Refunded $20.00 on order 99.",
        "answered in C0CONV/1712.0001: Refunded $250.00 on order 1234.",
    ]
    # All in the conversations' threads: the request, its outcome and the two answers.
    posted = [
        (call.data["channel"], call.data.get("thread_ts")) for call in slack.received("chat.postMessage")
    ]
    assert sorted(posted) == [(CONVERSATION, "1712.0001")] * 3 + [(CONVERSATION, "1712.0002")]
