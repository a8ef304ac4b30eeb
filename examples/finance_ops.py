"""Finance operations: escalation when nobody answers, an hour's grant, two approvers who edit.

Three tools of a finance agent, each with one of the richer decisions:

- ``refund``: the support lead approves refunds; when she has not answered within a moment
  (30 minutes in real life), the request goes to the finance on-call channel too, and the
  finance manager may decide it as well (``Escalation``).
- ``pay_invoice``: after approving one payment to a supplier, the controller allows the same
  payments for an hour (``hl.decide(..., grant=...)``, what Slack's and the web console's
  "Approve, and allow the same for 1 hour" button does): the next identical payments run
  without asking, each audited as granted.
- ``wire``: two distinct approvers must approve; the first trims the amount as she approves
  (an edit), which starts the count again, and the second approves the edited call.

Runs offline and finishes by itself::

    python examples/finance_ops.py

``AutoChannel`` objects play the people here; real deployments use ``SlackChannel``,
``EmailChannel`` or ``WebChannel`` for each.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta

import structlog

from humanlayer_async import ApprovalRequest, Escalation, HumanLayer, current_decision
from humanlayer_async.testing import AutoChannel, wait_for_pending

structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

# The support lead is away: her channel never answers. The finance on-call does, once asked.
support = AutoChannel(lambda request: None, by="lead@company.com")
finance_oncall = AutoChannel(lambda request: True, by="manager@company.com")
operator = AutoChannel(lambda request: None, by="nobody")  # requests wait here for hl.decide

hl = HumanLayer([operator])


@hl.require_approval(
    channels=[support],
    approvers=["lead@company.com"],
    escalate=[Escalation(after=0.2, channels=[finance_oncall], approvers=["manager@company.com"])],
)
async def refund(order: str, amount: float) -> str:
    decision = current_decision()
    assert decision is not None
    return f"refunded {amount} on {order} (approved by {decision.by})"


@hl.require_approval(approvers=["controller@company.com"])
async def pay_invoice(supplier: str, invoice: str) -> str:
    decision = current_decision()
    assert decision is not None
    return f"paid {invoice} to {supplier} via {decision.via}"


@hl.require_approval(approvals=2, approvers=["cfo@company.com", "ceo@company.com"], editable=["amount"])
async def wire(amount: int, iban: str) -> str:
    return f"wired {amount} to {iban}"


async def first_pending(function: str) -> ApprovalRequest:
    """The first pending request of ``function``, once there is one (as a person would see it)."""
    while True:
        waiting = [r for r in await wait_for_pending(hl) if r.function == function]
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.01)


async def controller() -> None:
    """Approves the first payment, and allows the same payments for an hour."""
    request = await first_pending("pay_invoice")
    await hl.decide(request.id, True, by="controller@company.com", grant=timedelta(hours=1))


async def board() -> None:
    """The CFO trims the wire as she approves; the CEO approves the call as edited."""
    request = await first_pending("wire")
    await hl.decide(
        request.id, True, by="cfo@company.com", edits={"amount": 40_000}, seen=request.fingerprint
    )
    edited = await hl.get(request.id)
    print(f"wire edited by the CFO: now {dict(edited.kwargs)}, {len(edited.votes)} of 2 approvals")
    await hl.decide(request.id, True, by="ceo@company.com", seen=edited.fingerprint)


async def main() -> None:
    async with hl:
        refunded, paid, wired, *_ = await asyncio.gather(
            refund("A-1001", 180.0),
            pay_invoice("acme", "INV-7"),
            wire(50_000, "DE44 5001 0517 5407 3249 31"),
            controller(),
            board(),
        )
        print(refunded)
        print(paid)
        # The grant covers the same call (every argument equal), for an hour, without asking.
        print(await pay_invoice("acme", "INV-7"))
        print(wired)
        [grant] = await hl.grants()
        where = dict(grant.where or {})
        print(f"grant {grant.id[:8]}: {grant.function} where {where}, used {grant.uses} time(s)")


if __name__ == "__main__":
    asyncio.run(main())
