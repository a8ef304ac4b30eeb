"""Sales automation: a person reviews every proposal before it goes to a client.

The first use case of the article, a plain ``def`` tool in a plain sync script, as the
article writes it: ``send_proposal`` always needs approval, so each call blocks its thread
until the reviewer answers, then runs there. The reviewer sees the deal's context next to
the call, and the tool learns who approved it through ``current_decision()``. Two
proposals go out at once, each from its own thread, each waiting for its own answer.

Runs offline and finishes by itself::

    python examples/sales_proposals.py

Channels: the sales team would answer in Slack (a ``#sales-approvals`` channel), with
email as a fallback for reviewers on the road; the first answer from either wins. Here
an ``AutoChannel`` plays the sales lead, by a rule, so no one has to be at hand. To ask
real people, pass real channels instead, e.g.::

    from humanlayer_async.channels import ConsoleChannel, EmailChannel, SlackChannel

    hl = HumanLayer([ConsoleChannel()])   # answer in this terminal: y <id> / n <id> reason
    hl = HumanLayer([                     # or: Slack (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET)
        SlackChannel(channel="#sales-approvals"),
        EmailChannel("sales-leads@company.com", inbound="mailgun", inbound_secret=...),
    ])

(see the Channels pages of the docs for each channel's set-up).
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import structlog

from humanlayer_async import ApprovalDenied, ApprovalRequest, HumanLayer, current_decision
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

CRM = {
    "jane@bigcorp.example": {"account": "BigCorp", "deal": "$48,000/yr", "discount": "10%"},
    "joe@startup.example": {"account": "Startup Inc", "deal": "$6,000/yr", "discount": "45%"},
}


def sales_lead(request: ApprovalRequest) -> bool | str:
    """The reviewer, as a rule: discounts over 30% go back to the rep."""
    discount = int(str(request.context["discount"]).rstrip("%"))
    return discount <= 30 or f"a {discount}% discount needs the VP of Sales; send it to them first"


hl = HumanLayer([AutoChannel(sales_lead, by="maria (sales lead)")])


@hl.require_approval(context=lambda client_email, **kwargs: CRM[client_email])
def send_proposal(client_email: str, proposal_pdf: bytes) -> str:
    """Sales team reviews before sending proposals."""
    decision = current_decision()
    assert decision is not None  # always gated: someone approved this very call
    return f"proposal ({len(proposal_pdf)} bytes) sent to {client_email}, approved by {decision.by}"


def propose(client_email: str) -> str:
    try:
        return send_proposal(client_email, b"%PDF-1.7 ... your custom proposal ...")
    except ApprovalDenied as denied:
        return f"not sent to {client_email}: {denied}"


def main() -> None:
    # No event loop here: the HumanLayer runs its own in a background thread until close().
    try:
        with ThreadPoolExecutor() as agent:
            for outcome in agent.map(propose, CRM):
                print(outcome)
    finally:
        hl.close()


if __name__ == "__main__":
    main()
