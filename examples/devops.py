"""DevOps automation: scaling needs the ops team's yes; deleting always needs a person.

The third use case of the article. The tools are plain ``def`` functions, as the article
writes them, and the agent is an asyncio program: it runs each tool call in a worker
thread (``asyncio.to_thread``, as agent frameworks run sync tools), where the call blocks
until decided, four at once. ``scale_infrastructure`` goes to the ops team's channel;
``delete_resources`` goes to two channels at once (the ops channel and the on-call
engineer), the first answer from either stands, and with ``on_reject="return"`` a refusal
comes back as a sentence the agent hands to its LLM instead of an exception.

Runs offline and finishes by itself::

    python examples/devops.py

Channels: scaling decisions would go to Slack (``#ops-approvals``); deletions to Slack
and to the on-call engineer's email, so whoever sees it first answers. Here two
``AutoChannel`` objects play the ops lead and the on-call engineer by rules. To ask
real people, use real channels instead: ``ops_slack = SlackChannel(channel="#ops-approvals")``
and ``oncall_email = EmailChannel("oncall@company.com", ...)``, or ``ConsoleChannel()`` to
answer in this terminal.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import structlog

from humanlayer_async import ApprovalRequest, HumanLayer, current_decision
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

CURRENT_REPLICAS = {"checkout": 4, "search": 2}


def ops_lead(request: ApprovalRequest) -> bool | str:
    """The ops lead: scale up to 3x; never delete anything tagged prod."""
    if request.function == "scale_infrastructure":
        before = int(request.context["current replicas"])
        replicas = int(request.kwargs["replicas"])
        return replicas <= 3 * before or f"{replicas} replicas is over 3x the current {before}"
    if any(resource.startswith("prod-") for resource in request.kwargs["resource_ids"]):
        return "prod resources are deleted by change request only"
    return True


ops_slack = AutoChannel(ops_lead, by="ops-lead")
# The on-call engineer answers later (delay) and would approve everything: too late,
# the first answer stands.
oncall_email = AutoChannel(lambda request: True, by="sre-oncall", delay=0.2)

hl = HumanLayer([ops_slack])


@hl.require_approval(
    context=lambda service, **kwargs: {"current replicas": CURRENT_REPLICAS[service]},
)
def scale_infrastructure(service: str, replicas: int) -> str:
    """Ops team confirms scaling decisions."""
    CURRENT_REPLICAS[service] = replicas
    return f"{service} scaled to {replicas} replicas"


@hl.require_approval(channels=[ops_slack, oncall_email], on_reject="return")
def delete_resources(resource_ids: list[str]) -> str:
    """Destructive operations always need approval."""
    decision = current_decision()
    assert decision is not None
    return f"deleted {', '.join(resource_ids)} (approved by {decision.by})"


async def main() -> None:
    # Enter the HumanLayer first, so it runs in this loop: a sync tool called before would
    # start it in a background thread of its own.
    async with hl:
        calls = {
            "scale checkout to 8": asyncio.to_thread(scale_infrastructure, "checkout", 8),
            "scale search to 20": asyncio.to_thread(scale_infrastructure, "search", 20),
            "delete tmp volumes": asyncio.to_thread(delete_resources, ["tmp-vol-1", "tmp-vol-2"]),
            "delete prod database": asyncio.to_thread(delete_resources, ["prod-db-1"]),
        }
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
    for label, result in zip(calls, results, strict=True):
        print(f"{label}: {result}")
    print(f"replicas now: {CURRENT_REPLICAS}")


if __name__ == "__main__":
    asyncio.run(main())
