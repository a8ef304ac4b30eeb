"""FastAPI: mount ``hl.asgi_app`` next to your own routes, run the HumanLayer in the lifespan.

With ``listen=None`` the SDK serves nothing itself: its routes (``/healthz``, and the
callback routes of channels such as Slack, email and the web console) are mounted
under ``/humanlayer`` of your app, and ``hl.lifespan`` starts and stops the
HumanLayer's background tasks with the app. One server, one port.

This example drives the app in-process through ``httpx.ASGITransport``, so it runs
offline and finishes by itself::

    pip install 'humanlayer-async[integrations]'
    python examples/fastapi_app.py

``hl.decide(by=...)`` trusts its caller: whoever calls it can name anyone. So the app's
decision endpoint authenticates the caller (a bearer token per user, checked in a FastAPI
dependency) and takes ``by`` from that, never from the request; the approver lists of the
gated tools then apply to a person the app has verified.

To serve it for real: ``uvicorn examples.fastapi_app:app`` (put TLS in front of it).
The ``inbox`` channel below stands in for the message a real channel would send to
a person: replace it with real channels, e.g. ``HumanLayer([ConsoleChannel()], listen=None)``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import sys
from typing import Annotated, Any

import anyio
import httpx
import structlog
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from humanlayer_async import ApprovalDenied, ApprovalRequest, HumanLayer, NotAnApprover, current_decision
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

# Each request the SDK sends lands in this stream and stays pending (the rule returns
# None): main() plays the approver, who answers through the app's own HTTP API.
notify, inbox = anyio.create_memory_object_stream[ApprovalRequest](16)


async def leave_pending(request: ApprovalRequest) -> None:
    await notify.send(request)


hl = HumanLayer([AutoChannel(leave_pending)], listen=None)
app = FastAPI(lifespan=hl.lifespan)
app.mount("/humanlayer", hl.asgi_app)


@hl.require_approval(condition=lambda amount, **kwargs: amount > 100, approvers=["finance-lead"])
async def refund(order_id: str, amount: float) -> str:
    """Refund an order; over $100 a finance lead must approve."""
    decision = current_decision()
    note = f", approved by {decision.by}" if decision else ""
    return f"refunded ${amount:.2f} on {order_id}{note}"


@app.post("/orders/{order_id}/refund")
async def refund_order(order_id: str, amount: float) -> dict[str, str]:
    try:
        return {"status": "refunded", "detail": await refund(order_id, amount)}
    except ApprovalDenied as denied:
        raise HTTPException(status_code=403, detail=str(denied)) from None


# One bearer token per person who may use the approvals API. Keep them out of the code:
# here from the environment, or random for this offline run.
TOKENS = {
    user: os.environ.get(f"APPROVALS_TOKEN_{user.upper().replace('-', '_')}") or secrets.token_urlsafe(24)
    for user in ("finance-lead", "intern")
}


def approver(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> str:
    """Who is calling, from their bearer token (compared in constant time); 401 otherwise."""
    offered = "" if credentials is None else credentials.credentials
    for user, token in TOKENS.items():
        if hmac.compare_digest(offered.encode(), token.encode()):
            return user
    raise HTTPException(status_code=401, detail="a valid bearer token is required")


@app.get("/approvals")
async def list_approvals(user: Annotated[str, Depends(approver)]) -> list[dict[str, Any]]:
    return [{"id": r.id, "function": r.function, "kwargs": dict(r.kwargs)} for r in await hl.pending()]


@app.post("/approvals/{request_id}")
async def decide(
    request_id: str, approved: bool, user: Annotated[str, Depends(approver)], comment: str | None = None
) -> dict[str, Any]:
    try:  # `by` is the authenticated caller: nobody can decide in someone else's name
        decision = await hl.decide(request_id, approved, by=user, comment=comment, via="api")
    except NotAnApprover as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from None
    if decision is None:  # a vote on a call that needs more approvals (approvals=2)
        return {"status": "pending", "by": None}
    return {"status": decision.status.value, "by": decision.by}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    # ASGITransport does not run lifespans: enter the app's lifespan as a server would.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        health = await client.get("/humanlayer/healthz")
        print(f"GET /humanlayer/healthz -> {health.status_code} {health.text}")

        small = await client.post("/orders/A-17/refund", params={"amount": 40})
        print(f"refund $40   -> {small.status_code} {small.json()['detail']}")

        async def big_refund(order: str, amount: float) -> None:
            response = await client.post(f"/orders/{order}/refund", params={"amount": amount})
            print(f"refund ${amount:.0f}  -> {response.status_code} {response.json()['detail']}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(big_refund, "A-18", 450)
            request = await inbox.receive()  # the approver got the message
            lead_auth = {"Authorization": f"Bearer {TOKENS['finance-lead']}"}
            listed = (await client.get("/approvals", headers=lead_auth)).json()
            print(f"GET /approvals -> {[(r['function'], r['kwargs']) for r in listed]}")
            anonymous = await client.post(f"/approvals/{request.id}", params={"approved": True})
            print(f"no token approves -> {anonymous.status_code} {anonymous.json()['detail']}")
            forged = await client.post(
                f"/approvals/{request.id}",
                params={"approved": True, "by": "finance-lead"},  # ignored: not how `by` is chosen
                headers={"Authorization": "Bearer not-a-token"},
            )
            print(f"forged token approves -> {forged.status_code} {forged.json()['detail']}")
            intern_auth = {"Authorization": f"Bearer {TOKENS['intern']}"}
            intern = await client.post(
                f"/approvals/{request.id}",
                params={"approved": True, "by": "finance-lead"},
                headers=intern_auth,
            )
            print(f"intern approves -> {intern.status_code} {intern.json()['detail']}")
            lead = await client.post(f"/approvals/{request.id}", params={"approved": True}, headers=lead_auth)
            print(f"finance-lead approves -> {lead.status_code} {lead.json()}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(big_refund, "A-19", 9000)
            request = await inbox.receive()
            params: dict[str, str | bool] = {"approved": False, "comment": "call the customer first"}
            await client.post(f"/approvals/{request.id}", params=params, headers=lead_auth)


if __name__ == "__main__":
    asyncio.run(main())
