"""Every example runs as a user would run it (``python examples/<name>.py``), and says what it should."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

INTEGRATIONS = {
    "openai_agents": "agents",
    "langgraph_agent": "langgraph",
    "pydantic_ai_agent": "pydantic_ai",
    "fastapi_app": "fastapi",
}


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
        if missing_extra(path.stem) is None
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


async def test_agent_loop(runs: Runs) -> None:
    out = await run_example(runs, "agent_loop")
    assert "40 look-ups done while 6 refunds waited for a human" in out
    assert "model: 4 refunds done; for the 2 refused, a human said: offer a 20% voucher instead" in out


async def test_openai_agents(runs: Runs) -> None:
    out = await run_example(runs, "openai_agents")
    # The SDK built the schema from the gated function's signature and docstring.
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
    assert "refunded $120.00 on order A-1001 (approved by support-lead)" in out
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
        "tool message: A human denied delete_resources by ops-lead via auto: "
        "vol-backups holds last night's backups; keep it. It did not run.",
        "tool message: deleted vol-tmp-1",  # the model acted on the refusal: it retried with less
    ]
    assert "model: Done: checkout now runs 6 replicas; deleted vol-tmp-1." in out


async def test_pydantic_ai_agent(runs: Runs) -> None:
    out = await run_example(runs, "pydantic_ai_agent")
    assert "tool: transfer_money: Transfer money from the company account." in out
    assert '"amount": {"description": "The amount in dollars.", "type": "number"}' in out
    assert '"required": ["amount", "recipient"]' in out
    assert "tool return: sent $250 to Globex" in out
    assert "tool return: sent $4,800 to ACME Supplies" in out
    assert (
        "tool return: A human denied transfer_money by treasurer@company.com via auto: "
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
