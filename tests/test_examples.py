"""Every example runs as a user would run it (``python examples/<name>.py``), and says what it should."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

INTEGRATIONS = {
    "openai_agents": "agents",
    "langgraph_agent": "langgraph",
    "pydantic_ai_agent": "pydantic_ai",
    "fastapi_app": "fastapi",
}


async def run_example(name: str) -> str:
    """Run one example in a fresh interpreter; return its standard output."""
    module = INTEGRATIONS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        reason = f"examples/{name}.py needs {module!r}: pip install -e '.[integrations]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must install the integrations extra)")
        pytest.skip(reason)
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / f"{name}.py")], cwd=EXAMPLES.parent, check=False
        )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, f"examples/{name}.py exited {result.returncode}:\n{out}\n{err}"
    return out


def test_every_example_is_tested() -> None:
    tested = {
        name.removeprefix("test_")
        for name in globals()
        if name.startswith("test_") and name != "test_every_example_is_tested"
    }
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


async def test_sales_proposals() -> None:
    out = await run_example("sales_proposals")
    assert "sent to jane@bigcorp.example, approved by maria (sales lead)" in out
    assert (
        "not sent to joe@startup.example: A human denied send_proposal by maria (sales lead) via auto: "
        "a 45% discount needs the VP of Sales" in out
    )


async def test_invoice_payments() -> None:
    out = await run_example("invoice_payments")
    lines = set(out.splitlines())
    assert "paid INV-001: $1,200.00 to ACME Supplies" in lines  # under $5,000: no approval asked
    assert "paid INV-002: $8,400.00 to Globex" in lines
    assert "NOT paid INV-003 ($27,000): no purchase order for this vendor" in lines
    assert "NOT paid INV-004 ($95,000): nobody approved it in time" in lines
    assert len(lines) == 4


async def test_devops() -> None:
    out = await run_example("devops")
    assert "scale checkout to 8: checkout scaled to 8 replicas\n" in out
    assert "scale search to 20: A human denied scale_infrastructure by ops-lead via auto: 20 replicas" in out
    # Two channels got the deletion; the first answer (ops-lead's) stood, not the on-call's.
    assert "delete tmp volumes: deleted tmp-vol-1, tmp-vol-2 (approved by ops-lead)" in out
    assert "delete prod database: A human denied delete_resources by ops-lead" in out
    assert "replicas now: {'checkout': 8, 'search': 2}" in out


async def test_agent_loop() -> None:
    out = await run_example("agent_loop")
    assert "40 look-ups done while 6 refunds waited for a human" in out
    assert "model: 4 refunds done; for the 2 refused, a human said: offer a 20% voucher instead" in out


async def test_openai_agents() -> None:
    out = await run_example("openai_agents")
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


async def test_langgraph_agent() -> None:
    out = await run_example("langgraph_agent")
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


async def test_pydantic_ai_agent() -> None:
    out = await run_example("pydantic_ai_agent")
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


async def test_fastapi_app() -> None:
    out = await run_example("fastapi_app")
    assert "GET /humanlayer/healthz -> 200 ok" in out
    assert "refund $40   -> 200 refunded $40.00 on A-17\n" in out
    assert "GET /approvals -> [('refund', {'order_id': 'A-18', 'amount': 450.0})]" in out
    assert "intern approves -> 403 'intern' is not an approver" in out
    assert "finance-lead approves -> 200 {'status': 'approved', 'by': 'finance-lead'}" in out
    assert "refund $450  -> 200 refunded $450.00 on A-18, approved by finance-lead" in out
    assert (
        "refund $9000  -> 403 A human denied refund by finance-lead via api: call the customer first." in out
    )
