"""What you need to test your own gated tools without a person at hand.

``AutoChannel`` decides every request it is sent by a rule of yours::

    hl = HumanLayer([AutoChannel(lambda request: request.kwargs["amount"] < 5000)])

It records what it was sent and how each request ended, for your assertions.

For Slack flows, build the payloads Slack sends and sign them as Slack does::

    payload = slack_block_actions(request.id, "approve", user="U024BE7LH")
    body = slack_form_body(payload)
    await client.post(f"{hl.url}/slack/events", content=body, headers=sign_slack_body(body, secret))
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from ._exceptions import ChannelError
from ._models import ApprovalRequest, Kind
from .channels import _slack_blocks as slack_blocks
from .channels.base import BaseChannel, Decider

if TYPE_CHECKING:
    import httpx

    from ._client import HumanLayer

__all__ = [
    "AutoChannel",
    "Rule",
    "api_client",
    "sign_slack_body",
    "slack_block_actions",
    "slack_form_body",
    "slack_view_submission",
    "wait_for_pending",
]

Rule = Callable[[ApprovalRequest], bool | str | Awaitable[bool | str | None] | None]
"""``True`` approves, ``False`` denies, a string answers a question (or, for an
approval, denies with that string as the reason), ``None`` leaves it pending."""


class AutoChannel(BaseChannel):
    """A channel that decides each request by ``rule``, as ``by``, through the real decide path.

    Decisions go through ``HumanLayer.decide`` / ``respond`` (approvers, first-wins and the
    audit trail apply), after ``delay`` seconds, from the channel's own task.
    ``sent`` lists the requests it received; ``updated`` the same requests as they ended.
    """

    name = "auto"

    def __init__(self, rule: Rule = lambda request: True, *, by: str = "auto", delay: float = 0.0) -> None:
        self.rule = rule
        self.by = by
        self.delay = delay
        self.sent: list[ApprovalRequest] = []
        self.updated: list[ApprovalRequest] = []
        self._decider: Decider | None = None
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"AutoChannel(by={self.by!r})"

    async def send(self, request: ApprovalRequest) -> str | None:
        if self._task_group is None or self._decider is None:
            raise ChannelError("AutoChannel.send() before run(): start the HumanLayer first")
        self.sent.append(request)
        self._task_group.start_soon(self._decide, self._decider, request)
        return request.id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        self.updated.append(request)

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as task_group:
            self._task_group, self._decider = task_group, decider
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._task_group = None

    async def _decide(self, decider: Decider, request: ApprovalRequest) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        verdict = self.rule(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None:
            return
        if isinstance(verdict, str) and request.kind == "question":
            await decider.respond(request.id, verdict, by=self.by, via=self.name)
        elif isinstance(verdict, str):
            await decider.decide(request.id, False, by=self.by, comment=verdict, via=self.name)
        else:
            await decider.decide(request.id, verdict, by=self.by, via=self.name)


async def wait_for_pending(
    hl: HumanLayer,
    count: int = 1,
    *,
    within: float = 10.0,
    kind: Kind | None = None,
    run_id: str | None = None,
) -> list[ApprovalRequest]:
    """The pending requests, once at least ``count`` are pending (oldest first).

    Wakes when a request is stored or decided, instead of polling ``hl.pending()``; raises
    ``TimeoutError`` saying how many were pending when ``within`` seconds have passed::

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer_money, 5000, "bob")
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, True, by="alice")
    """
    pending: list[ApprovalRequest] = []
    try:
        with anyio.fail_after(within):
            while True:
                changed = hl._engine.next_change()  # before reading: no change slips between
                pending = await hl.pending(kind=kind, run_id=run_id)
                if len(pending) >= count:
                    return pending
                await changed.wait()
    except TimeoutError:
        raise TimeoutError(f"{len(pending)} of {count} requests were pending after {within} s") from None


def api_client(hl: HumanLayer, token: str | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``hl``'s listener app (``hl.asgi_app``), through
    ``httpx.ASGITransport``: no socket, no port. With ``token``, it sends ``Authorization:
    Bearer <token>``, so each request goes through an ``ApiChannel`` as that token's user::

        api = ApiChannel(tokens={"alice": ALICE_TOKEN})
        async with HumanLayer([api], listen=None) as hl, api_client(hl, ALICE_TOKEN) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(transfer_money, 5000, "bob")
                [request] = await wait_for_pending(hl)
                answer = await client.post(
                    f"/api/v1/requests/{request.id}/decision", json={"approved": True}
                )
                assert answer.json()["decision"]["by"] == "alice"

    Enter the ``HumanLayer`` first (``async with hl``): the channel answers 503 until it runs.
    The client is a loopback one (``127.0.0.1``), as the web console wants.
    """
    import httpx

    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=hl.asgi_app, client=("127.0.0.1", 49152))
    return httpx.AsyncClient(transport=transport, base_url="http://humanlayer.test", headers=headers)


def sign_slack_body(
    body: bytes | str, signing_secret: str, *, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Slack sends with ``body``, signed with ``signing_secret``.

    The signature is ``v0=`` and the hex HMAC-SHA256 of ``v0:{timestamp}:{body}``;
    ``timestamp`` defaults to now (pass an old one to test stale requests).
    """
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(signing_secret.encode(), b"v0:" + stamp.encode() + b":" + raw, hashlib.sha256)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest.hexdigest()}",
    }


def slack_form_body(payload: Mapping[str, Any]) -> bytes:
    """An interaction payload as Slack posts it: ``payload=<url-encoded JSON>``."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack_block_actions(
    request_id: str,
    action: Literal["approve", "deny", "answer", "full", "edit", "grant"] = "approve",
    *,
    user: str = "U0TESTER",
    text: str | None = None,
    channel: str = "C0TEST",
    message_ts: str = "1700000000.000100",
    response_url: str | None = None,
    trigger_id: str = "1700000000.1.test",
    thread_ts: str | None = None,
    seen: str | None = None,
    seconds: float = 3600.0,
) -> dict[str, Any]:
    """The ``block_actions`` payload of a click on a ``SlackChannel`` message.

    ``action`` names the button (``"full"``: Show the full call, ``"edit"``: Edit,
    ``"grant"``: Approve, and allow the same for ``seconds``); ``"answer"`` with ``text`` is
    instead the answer box of a webhook-mode question, submitted with Enter.
    ``thread_ts`` is the thread the message is in, if any. ``seen`` is the call's
    ``fingerprint`` as the message showed it (as the channel's buttons carry it).
    """
    if action == "answer" and text is not None:
        element = {"type": "plain_text_input", "action_id": slack_blocks.ANSWER_INLINE, "value": text}
        element["block_id"] = request_id
    else:
        action_id = {
            "approve": slack_blocks.APPROVE,
            "deny": slack_blocks.DENY,
            "answer": slack_blocks.ANSWER,
            "full": slack_blocks.FULL,
            "edit": slack_blocks.EDIT,
        }
        value = request_id if action != "grant" else f"{request_id} {seconds!r}"
        element = {
            "type": "button",
            "action_id": slack_blocks.GRANTS[0] if action == "grant" else action_id[action],
            "block_id": "actions",
            "value": value if seen is None else f"{value} {seen}",
        }
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0TEST",
        "team": {"id": "T0TEST", "domain": "test"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "channel": {"id": channel, "name": "approvals"},
        "trigger_id": trigger_id,
        "actions": [{**element, "action_ts": f"{time.time():.6f}"}],
    }
    if response_url is not None:
        payload["response_url"] = response_url
    if thread_ts is not None:
        payload["container"]["thread_ts"] = thread_ts
    return payload


def slack_view_submission(
    request_id: str,
    text: str | None = None,
    *,
    modal: Literal["deny", "answer", "full", "edit"] = "deny",
    user: str = "U0TESTER",
    values: Mapping[str, str | None] | None = None,
    seen: str | None = None,
) -> dict[str, Any]:
    """The ``view_submission`` payload of ``SlackChannel``'s deny-reason, answer, full-call or
    edit modal.

    For ``modal="edit"``, ``values`` is the text in each argument's box (``None``: emptied),
    as Slack sends every box, changed or not; ``text`` is the comment. ``seen`` is the call's
    ``fingerprint`` as the modal showed it.
    """
    callback_id = {
        "deny": slack_blocks.DENY_VIEW,
        "answer": slack_blocks.ANSWER_VIEW,
        "full": slack_blocks.FULL_VIEW,
        "edit": slack_blocks.EDIT_VIEW,
    }[modal]
    value = {"type": "plain_text_input", "value": text}
    state: dict[str, Any] = {slack_blocks.TEXT_BLOCK: {slack_blocks.TEXT_ACTION: value}}
    for name, typed in (values or {}).items():
        box = {"type": "plain_text_input", "value": typed}
        state[slack_blocks.EDIT_BLOCK + name] = {slack_blocks.EDIT_INPUT: box}
    return {
        "type": "view_submission",
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0TEST",
        "team": {"id": "T0TEST", "domain": "test"},
        "trigger_id": "1700000000.2.test",
        "view": {
            "id": "V0TEST",
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": request_id if seen is None else f"{request_id} {seen}",
            "state": {"values": state},
        },
    }
