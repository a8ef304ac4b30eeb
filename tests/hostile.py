"""Shared by the fault, hostile-input, limit and secret tests: a ``HumanLayer`` serving every
inbound route at once (Slack, the four inbound-mail providers, the web console), signed
requests for each, and an approval left waiting that nothing hostile may decide."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.channels import EmailChannel, SlackChannel, WebChannel
from humanlayer_async.testing import sign_slack_body, slack_form_body, wait_for_pending

from .conftest import Inbox, Outcomes, make_channel
from .fake_slack import BOT_TOKEN, FakeSlack

__all__ = [
    "PROVIDERS",
    "SLACK_APPROVER",
    "SLACK_SECRET",
    "WEB_TOKEN",
    "Site",
    "serving",
    "signed_slack",
    "web_session",
]

SLACK_SECRET = "slack-signing-secret-SENTINEL-93be51"
WEB_TOKEN = "web-console-token-SENTINEL-7d41c2"
SLACK_APPROVER = "U0ALICE"
PROVIDERS = ("mailgun", "sendgrid", "postmark", "generic")


def signed_slack(payload: dict[str, Any], *, secret: str = SLACK_SECRET) -> tuple[bytes, dict[str, str]]:
    """A callback body and the headers Slack signs it with."""
    body = slack_form_body(payload)
    return body, sign_slack_body(body, secret)


@dataclass
class Site:
    """A running ``HumanLayer`` with every inbound route, and one approval waiting."""

    hl: HumanLayer
    slack: SlackChannel
    web: WebChannel
    emails: dict[str, EmailChannel]
    request: ApprovalRequest
    runs: list[str]
    outcomes: Outcomes

    async def untouched(self) -> bool:
        """The waiting approval is still pending, and its tool never ran."""
        return (await self.hl.get(self.request.id)).decision is None and self.runs == []


@contextlib.asynccontextmanager
async def serving(
    slack: FakeSlack, inbox: Inbox, *, listen: str | None, **options: Any
) -> AsyncIterator[Site]:
    """A ``HumanLayer`` with Slack, four email channels and the web console, and one approval
    of ``wire(amount=5000)`` waiting (delivered through the console only). A genuine answer on
    any route would decide it: Slack's from ``SLACK_APPROVER``, a reply from an email
    channel's recipient, a signed-in console user."""
    slack_channel = SlackChannel(
        bot_token=BOT_TOKEN,
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=slack.api_url,
        approvers=[SLACK_APPROVER],
    )
    web = WebChannel(token=WEB_TOKEN)
    emails = {provider: make_channel(inbox, provider) for provider in PROVIDERS}
    channels = [slack_channel, web, *emails.values()]
    runs: list[str] = []
    async with HumanLayer(channels, listen=listen, **options) as hl, anyio.create_task_group() as tg:

        @hl.require_approval(channels=[web])
        async def wire(amount: int) -> str:
            runs.append(f"wired {amount}")
            return f"wired {amount}"

        outcomes = Outcomes(tg)
        outcomes.start(lambda: wire(5000))
        [request] = await wait_for_pending(hl, within=5)
        yield Site(hl, slack_channel, web, emails, request, runs, outcomes)
        tg.cancel_scope.cancel()


async def web_session(client: httpx.AsyncClient, base: str = "") -> str:
    """Sign ``client`` in to the console with ``WEB_TOKEN`` (the posted form); the page's CSRF token."""
    url = client.base_url.join(f"{base}/approvals/sign-in")
    origin = f"{url.scheme}://{url.netloc.decode()}"
    response = await client.post(url, data={"token": WEB_TOKEN}, headers={"Origin": origin})
    assert response.status_code == 303, response.text
    page = await client.get(f"{base}/approvals")
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)
