"""Secrets never leak: flows through every channel, with distinctive secrets, and a scan of
everything a person or a log could see.

What is scanned: structlog events (``capture_logs``), every stdlib log record down to DEBUG
(third-party libraries included), what the process printed, the reprs of the ``HumanLayer``,
its channels and store, the messages of the errors raised, the audit trail, the console's
pages and event stream, and what reached Slack and the mailboxes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from humanlayer_async import ChannelError, HumanLayer, StoreError
from humanlayer_async.channels import SlackChannel, WebChannel
from humanlayer_async.stores import MemoryStore, PostgresStore
from humanlayer_async.testing import sign_slack_body, slack_block_actions, slack_form_body, wait_for_pending

from .conftest import ALICE, SECRET, TOKEN_SECRET, Inbox, Outcomes, make_channel, post_mailgun
from .fake_slack import BOT_TOKEN, FakeSlack
from .hostile import SLACK_APPROVER, SLACK_SECRET, WEB_TOKEN, web_session

pytestmark = pytest.mark.anyio

SMTP_PASSWORD = "smtp-pass"  # what the test SMTP server accepts
TOOL_SECRET = "tool-argument-SENTINEL-6a0e"
NESTED_SECRET = "nested-header-SENTINEL-91d2"
KWARGS_SECRET = "kwargs-token-SENTINEL-3f70"
DSN_PASSWORD = "dsn-password-SENTINEL-b7c3"

SECRETS = {
    "Slack bot token": BOT_TOKEN,
    "Slack signing secret": SLACK_SECRET,
    "SMTP password": SMTP_PASSWORD,
    "inbound-mail secret": SECRET,
    "reply-token key": TOKEN_SECRET,
    "web console token": WEB_TOKEN,
    "a tool's api_key argument": TOOL_SECRET,
    "an Authorization header nested in an argument": NESTED_SECRET,
    "an accessToken passed through **options": KWARGS_SECRET,
}


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """The secrets found in ``text``, as given or URL-encoded."""
    return [name for name, value in secrets.items() if value in text or quote(value, safe="") in text]


CLIENT_LOGGERS = ("httpx", "httpcore")
"""The test's own HTTP client (standing in for the browser, Slack, the mail provider) logs the
URLs it requests, the console's sign-in URL included, as any client may. The SDK has no httpx
logging of its own: it does not send HTTP requests with httpx."""


def scanned(logs: Iterable[Any], records: Iterable[logging.LogRecord], printed: str, *more: object) -> str:
    lines = [repr(entry) for entry in logs]
    for record in records:
        if record.name.startswith(CLIENT_LOGGERS):
            continue
        lines.append(record.getMessage())
        lines.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            lines.append(repr(record.exc_info[1]))
    lines.append(printed)
    lines.extend(str(item) if isinstance(item, str) else repr(item) for item in more)
    return "\n".join(lines)


async def test_no_secret_reaches_logs_reprs_errors_pages_or_messages(
    fake_slack: FakeSlack,
    inbox: Inbox,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    slack = SlackChannel(
        bot_token=BOT_TOKEN,
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=fake_slack.api_url,
        approvers=[SLACK_APPROVER],
    )
    email = make_channel(inbox, to=ALICE, smtp_username="mailer@company.com", smtp_password=SMTP_PASSWORD)
    web = WebChannel(token=WEB_TOKEN)
    wrong_password = make_channel(inbox, to=ALICE, smtp_username="mailer@company.com", smtp_password="x" * 9)
    store = MemoryStore()
    seen: list[object] = []
    runs: list[str] = []
    with capture_logs() as logs:
        async with (
            HumanLayer([slack, email, web], store=store, listen="127.0.0.1:0") as hl,
            httpx.AsyncClient(base_url=str(hl.url)) as client,
            anyio.create_task_group() as tg,
        ):

            @hl.require_approval()
            async def charge(customer: str, amount: int, api_key: str, **options: object) -> str:
                runs.append(customer)
                return f"charged {customer}"

            @hl.require_approval(channels=[wrong_password])
            async def refund(api_key: str) -> None:
                raise AssertionError("ran without a yes")

            outcomes = Outcomes(tg)
            for customer in ("slack-co", "email-co", "web-co"):
                outcomes.start(
                    lambda customer=customer: charge(  # type: ignore[misc]
                        customer,
                        10,
                        TOOL_SECRET,
                        headers={"Authorization": f"Bearer {NESTED_SECRET}"},
                        accessToken=KWARGS_SECRET,
                    )
                )
            pending = {r.kwargs["customer"]: r for r in await wait_for_pending(hl, 3, within=5)}
            await fake_slack.wait_calls("chat.postMessage", 3)
            mails = await inbox.wait(3)

            # Slack: a forged click, then the approver's real one.
            click = slack_form_body(slack_block_actions(pending["slack-co"].id, user=SLACK_APPROVER))
            forged = await client.post(
                "/slack/events", content=click, headers=sign_slack_body(click, "a-guess-at-the-secret")
            )
            real = await client.post(
                "/slack/events", content=click, headers=sign_slack_body(click, SLACK_SECRET)
            )
            assert (forged.status_code, real.status_code) == (401, 200)

            # Email: a reply through Mailgun, and a webhook with the wrong key.
            mail = next(m for m in mails if "email-co" in m.get_body(("plain",)).get_content())  # type: ignore[union-attr]
            bad = await post_mailgun(client, to=mail["Reply-To"], sender=ALICE, text="approve", key="wrong")
            good = await post_mailgun(client, to=mail["Reply-To"], sender=ALICE, text="approve")
            assert (bad.status_code, good.status_code) == (401, 200)

            # The console: a wrong token, the real one in a URL (refused), the real one posted,
            # the page, the event stream, a decision.
            origin = {"Origin": str(client.base_url).rstrip("/")}
            wrong = await client.post("/approvals/sign-in", data={"token": WEB_TOKEN[:-1]}, headers=origin)
            in_url = await client.get("/approvals", params={"token": WEB_TOKEN})
            assert (wrong.status_code, in_url.status_code) == (401, 400)
            csrf = await web_session(client)
            page = await client.get("/approvals")
            async with client.stream("GET", "/approvals/events") as events:
                snapshot = ""
                async for chunk in events.aiter_text():
                    snapshot += chunk
                    if "event: snapshot" in snapshot and snapshot.endswith("\n\n"):
                        break
            decided = await client.post(
                f"/approvals/requests/{pending['web-co'].id}", data={"csrf": csrf, "action": "approve"}
            )
            assert decided.status_code == 303
            with anyio.fail_after(10):
                while len(outcomes.ended) < 3:
                    await anyio.sleep(0.01)

            # Errors: SMTP refuses the login; a store's errors.
            with pytest.raises(ChannelError) as refused_login:
                await refund(TOOL_SECRET)
            seen.extend([refused_login.value, refused_login.value.__cause__])
            await fake_slack.wait_calls("chat.update", 3)
            await inbox.wait(4)
            seen.extend([repr(hl), repr(slack), repr(email), repr(web), repr(store), repr(wrong_password)])
    assert sorted(runs) == ["email-co", "slack-co", "web-co"]
    printed = capsys.readouterr()
    text = scanned(
        logs,
        caplog.records,
        printed.out + printed.err,
        *seen,
        *store.audit_log,
        page.text,
        snapshot,
        *(call.data for call in fake_slack.calls),
        *(message.as_string() for message in inbox.messages),
    )
    assert leaks(text, SECRETS) == []
    # The control: the scan does find a secret where one is (the client's own sign-in request).
    client_lines = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(CLIENT_LOGGERS))
    assert leaks(client_lines, SECRETS) == ["web console token"]
    assert len(caplog.records) > 50  # third-party DEBUG logging was on and was scanned too
    assert "charge" in page.text and "***" in page.text  # the page shows the call, masked


@pytest.mark.postgres
async def test_the_dsn_password_stays_out_of_logs_reprs_and_errors(
    pg_dsn: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user_host = pg_dsn.removeprefix("postgresql://")
    user, _, host = user_host.partition("@")
    dsn = f"postgresql://{user.partition(':')[0]}:{DSN_PASSWORD}@{host}"  # trust auth: any password does
    store = PostgresStore(dsn, schema=pg_schema)
    unreachable = PostgresStore(f"postgresql://someone:{DSN_PASSWORD}@127.0.0.1:1/none", connect_timeout=2)
    with capture_logs() as logs:
        async with (
            HumanLayer([], store=store, listen=None, run_id="dsn-run") as hl,
            anyio.create_task_group() as tg,
        ):

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            outcomes = Outcomes(tg)
            outcomes.start(deploy)
            [request] = await wait_for_pending(hl, within=5)
            await hl.decide(request.id, True, by="ops")
        with pytest.raises(StoreError) as failed:
            await unreachable.list_pending()
        await unreachable.aclose()
    assert outcomes.ended == ["deployed"]
    text = scanned(logs, caplog.records, "", repr(hl), repr(store), repr(unreachable), failed.value)
    assert leaks(text, {"DSN password": DSN_PASSWORD}) == []
    assert failed.value.__cause__ is not None
