"""Financial operations: invoices over $5,000 need the CFO's approval.

The second use case of the article, a plain ``def`` tool called from a plain sync script.
``condition`` decides which calls need a human (small invoices are paid at once),
``context`` tells the approver what they need to know, ``approvers`` allows only the CFO
to decide, and ``timeout`` fails closed: an invoice nobody approves in time is not paid.
A call that needs approval blocks the script until it is decided.

Runs offline and finishes by itself (in about a second, the timeout below)::

    python examples/invoice_payments.py

Channels: the CFO would get an email and answer by replying "approve" or "deny
<reason>" (or click in the web console); email is what reaches them anywhere. Here an
``AutoChannel`` plays the CFO by a rule. To ask a person, pass real channels instead,
e.g. ``HumanLayer([ConsoleChannel()], timeout=86400)`` to answer in this terminal, with
a day to do so, or, with ``SMTP_HOST`` and friends in the environment::

    HumanLayer([EmailChannel("cfo@company.com", inbound="postmark", inbound_secret=...)], timeout=86400)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import date

import structlog

from humanlayer_async import ApprovalDenied, ApprovalRequest, ApprovalTimeout, HumanLayer
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)


@dataclass(frozen=True)
class Invoice:
    number: str
    vendor: str
    amount: float
    due: date


def cfo(request: ApprovalRequest) -> bool | str | None:
    """The CFO, as a rule: approves known vendors, refuses others, and is away for big ones."""
    if request.context["amount"] > 40_000:
        return None  # no answer: the request times out and the invoice is not paid
    return request.context["vendor"] != "Unknown Vendor Ltd" or "no purchase order for this vendor"


hl = HumanLayer([AutoChannel(cfo, by="cfo@company.com")], timeout=1.0)  # in production: hours


@hl.require_approval(
    condition=lambda invoice, **kwargs: invoice.amount > 5000,
    context=lambda invoice, **kwargs: {
        "vendor": invoice.vendor,
        "amount": invoice.amount,
        "due": invoice.due.isoformat(),
    },
    approvers=["cfo@company.com"],
)
def pay_invoice(invoice: Invoice) -> str:
    """Large invoices need CFO approval."""
    return f"paid {invoice.number}: ${invoice.amount:,.2f} to {invoice.vendor}"


def pay(invoice: Invoice) -> None:
    try:
        print(pay_invoice(invoice))
    except ApprovalTimeout:
        print(f"NOT paid {invoice.number} (${invoice.amount:,.0f}): nobody approved it in time")
    except ApprovalDenied as denied:
        print(f"NOT paid {invoice.number} (${invoice.amount:,.0f}): {denied.decision.comment}")


def main() -> None:
    invoices = [
        Invoice("INV-001", "ACME Supplies", 1_200.00, date(2026, 7, 1)),
        Invoice("INV-002", "Globex", 8_400.00, date(2026, 7, 15)),
        Invoice("INV-003", "Unknown Vendor Ltd", 27_000.00, date(2026, 7, 3)),
        Invoice("INV-004", "Initech", 95_000.00, date(2026, 8, 1)),
    ]
    # No event loop here: the HumanLayer runs its own in a background thread until close().
    try:
        for invoice in invoices:
            pay(invoice)
    finally:
        hl.close()


if __name__ == "__main__":
    main()
