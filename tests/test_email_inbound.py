"""Inbound-mail webhooks that must decide nothing: ambiguous, automatic, spoofed, forged,
stale, replayed or malformed. Each is a 4xx with a log line; the request stays pending."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from humanlayer_async import ApprovalRequest, Decision, HumanLayer, Status, StoreError
from humanlayer_async.stores import MemoryStore
from humanlayer_async.stores.base import Store
from humanlayer_async.testing import wait_for_pending

from .conftest import (
    ALICE,
    BOB,
    SECRET,
    TOKEN_SECRET,
    Inbox,
    Outcomes,
    make_channel,
    post_generic,
    post_mailgun,
    post_postmark,
    post_reply,
    post_sendgrid,
    running,
    sign_generic,
    text_of,
)

pytestmark = pytest.mark.anyio

PROVIDERS = ("mailgun", "sendgrid", "postmark", "generic")


class Pending:
    """A gated call waiting for an answer, and the reply address each recipient was given."""

    def __init__(self, request: ApprovalRequest, reply_to: dict[str, str]) -> None:
        self.request = request
        self.reply_to = reply_to


@contextlib.asynccontextmanager
async def waiting(
    inbox: Inbox, *providers: str, store: Store | None = None, **options: Any
) -> AsyncIterator[tuple[HumanLayer, httpx.AsyncClient, Pending]]:
    """A HumanLayer with one EmailChannel per provider, and one request waiting."""
    channels = [make_channel(inbox, provider, **options) for provider in providers]
    async with (
        HumanLayer(channels, listen="127.0.0.1:0", store=store) as hl,
        anyio.create_task_group() as tg,
    ):
        assert hl.url is not None

        @hl.require_approval()
        async def drop_table(name: str) -> str:
            return f"dropped {name}"

        Outcomes(tg).start(lambda: drop_table("users"))
        [request] = await wait_for_pending(hl, within=5)
        mails = await inbox.wait(len(channels) * len(channels[0].to))
        async with httpx.AsyncClient(base_url=hl.url) as client:
            yield hl, client, Pending(request, {m["To"]: m["Reply-To"] for m in mails})
        tg.cancel_scope.cancel()


def refusals(logs: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    return [(e["status"], e["reason"]) for e in logs if e["event"] == "listener.refused"]


# -- not an answer ---------------------------------------------------------------------------


async def test_ambiguous_replies_decide_nothing_and_one_approver_gets_one_help_reply(inbox: Inbox) -> None:
    async with waiting(inbox, "mailgun") as (hl, client, pending):
        with capture_logs() as logs:
            first = await post_mailgun(
                client,
                to=pending.reply_to[ALICE],
                sender=ALICE,
                text="No problem, go ahead",
                message_id="<reply-1@mail.company.com>",
            )
            assert first.status_code == 422
            [help_mail] = (await inbox.wait(3))[2:]
            for text in ("not approved", "Sure thing!", "", "approve this please"):
                again = await post_mailgun(client, to=pending.reply_to[ALICE], sender=ALICE, text=text)
                assert again.status_code == 422
            from_bob = await post_mailgun(client, to=pending.reply_to[BOB], sender=BOB, text="maybe later")
            assert from_bob.status_code == 422
            assert (await hl.get(pending.request.id)).status is Status.PENDING
            decided = await post_mailgun(client, to=pending.reply_to[BOB], sender=BOB, text="Yes.")
            assert decided.json() == {"status": "approved"}
            messages = await inbox.wait(5)
    assert help_mail["To"] == ALICE
    assert help_mail["In-Reply-To"] == "<reply-1@mail.company.com>"
    assert help_mail["References"] == f"<hl.{pending.request.id}.0@company.com> <reply-1@mail.company.com>"
    assert help_mail["Reply-To"] == pending.reply_to[ALICE]
    assert help_mail["Auto-Submitted"] == "auto-replied"
    assert "did not approve or deny drop_table(name='users')" in text_of(help_mail)
    assert "deny: <reason>" in text_of(help_mail)
    assert len(messages) == 5 and sorted(m["To"] for m in messages[3:]) == [ALICE, BOB]
    assert all(f"approved by {BOB} via email" in text_of(m) for m in messages[3:])
    assert len(refusals(logs)) == 6 and {status for status, _ in refusals(logs)} == {422}


async def test_non_approvers_and_automatic_replies_get_no_help(inbox: Inbox) -> None:
    async with waiting(inbox, "generic", approvers=[ALICE]) as (hl, client, pending):
        with capture_logs() as logs:
            bob_clear = await post_generic(client, to=pending.reply_to[BOB], sender=BOB, text="approve")
            bob_vague = await post_generic(client, to=pending.reply_to[BOB], sender=BOB, text="hmm")
            out_of_office = await post_generic(
                client,
                to=pending.reply_to[ALICE],
                sender=ALICE,
                text="No, I am out of the office until Monday.",
                headers=[("Auto-Submitted", "auto-replied")],
            )
            bulk = await post_generic(
                client, to=pending.reply_to[ALICE], sender=ALICE, text="yes", headers=[("Precedence", "bulk")]
            )
            assert (await hl.get(pending.request.id)).status is Status.PENDING
            decided = await post_generic(client, to=pending.reply_to[ALICE], sender=ALICE, text="deny")
            assert decided.json() == {"status": "denied"}
            messages = await inbox.wait(4)
    assert [r.status_code for r in (bob_clear, bob_vague, out_of_office, bulk)] == [403, 403, 422, 422]
    assert "not an approver" in bob_clear.text and "automatic" in out_of_office.text
    assert len(messages) == 4 and all(m["In-Reply-To"] for m in messages[2:])  # two follow-ups, no help
    assert len(refusals(logs)) == 4


# -- spoofed, forwarded, guessed -------------------------------------------------------------


def _forged_token(token: str, request_id: str) -> str:
    """``token`` carrying another request id, its MAC left as it was."""
    raw = base64.b32decode(token.upper() + "====")
    forged = bytes.fromhex(request_id) + raw[16:]
    return base64.b32encode(forged).decode().rstrip("=").lower()


async def test_spoofed_forwarded_guessed_and_failing_senders_are_refused(inbox: Inbox) -> None:
    async with waiting(inbox, *PROVIDERS) as (hl, client, pending):
        alice_address = pending.reply_to[ALICE]
        token = alice_address.partition("+")[2].partition("@")[0]
        guessed = alice_address.replace(
            token, "".join(random.choices("abcdefghijklmnopqrstuvwxyz234567", k=44))
        )
        other_request = alice_address.replace(token, _forged_token(token, secrets.token_hex(16)))
        with capture_logs() as logs:
            statuses: dict[str, list[int]] = {}
            for provider in PROVIDERS:
                attempts = [
                    {"to": alice_address, "sender": "Alice <mallory@evil.example>"},  # spoofed
                    {"to": alice_address, "sender": BOB},  # forwarded to another approver
                    {"to": guessed, "sender": ALICE},
                    {"to": other_request, "sender": ALICE},
                    {"to": "approvals@replies.company.com", "sender": ALICE},  # no token
                ]
                results = [await post_reply(provider, client, text="approve", **a) for a in attempts]
                statuses[provider] = [r.status_code for r in results]
            failing = [
                await post_mailgun(
                    client,
                    to=alice_address,
                    sender=ALICE,
                    text="approve",
                    verdicts=[("X-Mailgun-Spf", "Fail"), ("X-Mailgun-Dkim-Check-Result", "Pass")],
                ),
                await post_mailgun(
                    client,
                    to=alice_address,
                    sender=ALICE,
                    text="approve",
                    verdicts=[("X-Mailgun-Dkim-Check-Result", "Fail"), ("X-Mailgun-Spf", "Pass")],
                ),
                await post_sendgrid(client, to=alice_address, sender=ALICE, text="approve", spf="softfail"),
                await post_sendgrid(
                    client, to=alice_address, sender=ALICE, text="approve", dkim="{@company.com : fail}"
                ),
                await post_postmark(client, to=alice_address, sender=ALICE, text="approve", spf="Fail"),
                await post_generic(
                    client,
                    to=alice_address,
                    sender=ALICE,
                    text="approve",
                    headers=[("Authentication-Results", "mx.company.com; spf=pass; dkim=pass; dmarc=fail")],
                ),
            ]
            assert (await hl.get(pending.request.id)).status is Status.PENDING
            # A passing verdict does not stand in for the token and sender checks, and vice versa:
            passing = await post_sendgrid(
                client,
                to=alice_address,
                sender=ALICE,
                text="approve",
                dkim="{@a.com : fail}, {@company.com : pass}",
            )
    assert statuses == {provider: [403] * 5 for provider in PROVIDERS}
    assert [r.status_code for r in failing] == [403] * 6
    assert "spf=fail" in failing[0].text and "dmarc=fail" in failing[5].text
    assert passing.json() == {"status": "approved"}
    assert len(refusals(logs)) == 26
    logged = repr(logs)
    for secret in (SECRET, TOKEN_SECRET, token):
        assert secret not in logged


async def test_a_token_for_an_unknown_request_is_404(inbox: Inbox) -> None:
    channel = make_channel(inbox, "generic")
    async with running(channel) as (_, client):
        address = channel._reply_address(secrets.token_hex(16), 0)
        response = await post_generic(client, to=address, sender=ALICE, text="approve")
    assert response.status_code == 404


async def test_without_an_inbound_secret_every_webhook_is_refused(inbox: Inbox) -> None:
    channel = make_channel(inbox, "generic")
    channel._inbound_secret = None
    with capture_logs() as logs:
        async with running(channel) as (_, client):
            response = await post_generic(
                client, to="approvals@replies.company.com", sender=ALICE, text="yes"
            )
    assert (response.status_code, response.text) == (
        403,
        "inbound mail is not configured (no inbound_secret)",
    )
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert [e["event"] for e in logs if e["event"].startswith("email.")] == ["email.inbound_disabled"]
    assert [
        (e["path"], e["method"], e["status"], e["reason"]) for e in logs if e["event"] == "listener.refused"
    ] == [("/email/inbound/generic", "POST", 403, "inbound mail is not configured (no inbound_secret)")]


# -- verdicts aligned with the From domain --------------------------------------------------


def _authentication_results(*results: str) -> list[tuple[str, str]]:
    return [("Authentication-Results", "; ".join(["mx.company.com", *results]))]


async def test_a_pass_counts_only_for_the_from_domain_and_missing_verdicts_refuse(inbox: Inbox) -> None:
    evil = "bounce@evil.example"
    async with waiting(inbox, *PROVIDERS) as (hl, client, pending):
        to = pending.reply_to[ALICE]
        reply: dict[str, Any] = {"to": to, "sender": f"Alice <{ALICE}>", "text": "approve"}
        with capture_logs() as logs:
            responses = {
                "mailgun: SPF pass for another envelope sender": await post_mailgun(
                    client, **reply, verdicts=[("X-Mailgun-Spf", "Pass")], envelope=evil
                ),
                "mailgun: a DKIM pass names no domain": await post_mailgun(
                    client,
                    **reply,
                    verdicts=[("X-Mailgun-Dkim-Check-Result", "Pass"), ("X-Mailgun-Spf", "Neutral")],
                ),
                "mailgun: no verdicts": await post_mailgun(client, **reply, verdicts=[]),
                "mailgun: the message's own Authentication-Results": await post_mailgun(
                    client,
                    **reply,
                    verdicts=[],
                    headers=_authentication_results("dmarc=pass header.from=company.com"),
                ),
                "sendgrid: SPF and DKIM pass for evil.example": await post_sendgrid(
                    client, **reply, envelope=evil, dkim="{@evil.example : pass}"
                ),
                "sendgrid: a subdomain does not align": await post_sendgrid(
                    client, **reply, spf="neutral", dkim="{@mail.company.com : pass}"
                ),
                "sendgrid: a lookalike domain does not align": await post_sendgrid(
                    client, **reply, spf="none", dkim="{@company.com.evil.example : pass}"
                ),
                "sendgrid: no verdicts": await post_sendgrid(client, **reply, spf=None, dkim=None),
                "postmark: SPF pass for another envelope sender": await post_postmark(
                    client, **reply, envelope=evil
                ),
                "postmark: no Received-SPF": await post_postmark(client, **reply, spf=None),
                "generic: passes for evil.example": await post_generic(
                    client,
                    **reply,
                    headers=_authentication_results(
                        f"spf=pass smtp.mailfrom={evil}",
                        "dkim=pass header.d=evil.example",
                        "dmarc=pass header.from=evil.example",
                    ),
                ),
                "generic: passes naming no domain": await post_generic(
                    client, **reply, headers=_authentication_results("spf=pass", "dkim=pass", "dmarc=pass")
                ),
                "generic: the domain only in a comment": await post_generic(
                    client,
                    **reply,
                    headers=_authentication_results("dkim=pass (header.d=company.com) header.d=evil.example"),
                ),
                "generic: SPF pass for the HELO name": await post_generic(
                    client,
                    **reply,
                    headers=[("Received-SPF", f"pass identity=helo; helo=company.com; envelope-from={evil}")],
                ),
            }
            assert (await hl.get(pending.request.id)).status is Status.PENDING
            aligned = await post_generic(
                client,
                **reply,
                headers=_authentication_results(
                    "spf=softfail smtp.mailfrom=evil.example", "dkim=pass header.d=Company.COM header.s=s1"
                ),
            )
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(responses, 403)
    assert (
        "no SPF, DKIM or DMARC pass for company.com" in responses["sendgrid: a subdomain does not align"].text
    )
    for name in ("mailgun: no verdicts", "sendgrid: no verdicts", "postmark: no Received-SPF"):
        assert "reported no SPF, DKIM or DMARC verdict" in responses[name].text
    assert aligned.status_code == 403 and "spf=softfail" in aligned.text  # a failure still refuses
    assert refusals(logs) == [(r.status_code, r.text) for r in [*responses.values(), aligned]]
    assert all(e["sender"] == ALICE and e["request_id"] for e in logs if e["event"] == "listener.refused")


@pytest.mark.parametrize(
    ("provider", "extra"),
    [
        ("mailgun", {"verdicts": [("X-Mailgun-Spf", "Pass")], "envelope": "Alice@COMPANY.com"}),
        ("sendgrid", {"spf": "neutral", "dkim": "{@other.example : fail, @company.com : pass}"}),
        ("postmark", {"envelope": "alice+bounces@company.com"}),
        ("generic", {"headers": _authentication_results("dmarc=pass (p=REJECT) header.from=company.com")}),
        ("generic", {"headers": _authentication_results('spf=pass smtp.mailfrom="a;b"@company.com')}),
        ("generic", {"headers": [("Received-SPF", 'Pass (x) envelope-from="alice@company.com"; helo=x')]}),
        ("generic", {}),  # a bridge of your own that reports no verdicts vouches for the mail itself
    ],
)
async def test_a_pass_aligned_with_the_from_domain_decides(
    inbox: Inbox, provider: str, extra: dict[str, Any]
) -> None:
    async with waiting(inbox, provider) as (hl, client, pending):
        response = await post_reply(
            provider, client, to=pending.reply_to[ALICE], sender=ALICE, text="yes", **extra
        )
        assert response.json() == {"status": "approved"}
        assert (await hl.get(pending.request.id)).status is Status.APPROVED


# -- forged, stale, replayed -----------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_forged_signatures_and_wrong_credentials_are_401(inbox: Inbox) -> None:
    async with waiting(inbox, *PROVIDERS) as (hl, client, pending):
        to = pending.reply_to[ALICE]
        body = json.dumps({"from": ALICE, "to": to, "text": "approve"}).encode()
        good = sign_generic(body)
        with capture_logs() as logs:
            responses = {
                "mailgun wrong key": await post_mailgun(
                    client, to=to, sender=ALICE, text="approve", key="guess"
                ),
                "mailgun unsigned": await client.post(
                    "/email/inbound/mailgun", data={"recipient": to, "from": ALICE, "body-plain": "approve"}
                ),
                "sendgrid wrong password": await post_sendgrid(
                    client, to=to, sender=ALICE, text="approve", password="guess"
                ),
                "sendgrid no auth": await client.post(
                    "/email/inbound/sendgrid", data={"to": to, "from": ALICE}
                ),
                "sendgrid bad base64": await client.post(
                    "/email/inbound/sendgrid", headers={"Authorization": "Basic !!!"}, data={"to": to}
                ),
                "postmark wrong password": await post_postmark(
                    client, to=to, sender=ALICE, text="approve", password="guess"
                ),
                "postmark bearer": await client.post(
                    "/email/inbound/postmark", json={}, headers={"Authorization": f"Bearer {SECRET}"}
                ),
                "generic wrong key": await client.post(
                    "/email/inbound/generic", content=body, headers=sign_generic(body, key="guess")
                ),
                "generic other body": await client.post(
                    "/email/inbound/generic", content=body.replace(b"approve", b"deny"), headers=good
                ),
                "generic unsigned": await client.post("/email/inbound/generic", content=body),
                "generic no prefix": await client.post(
                    "/email/inbound/generic",
                    content=body,
                    headers={**good, "X-Signature": good["X-Signature"].removeprefix("sha256=")},
                ),
            }
            assert (await hl.get(pending.request.id)).status is Status.PENDING
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(responses, 401)
    assert len(refusals(logs)) == len(responses)


async def test_stale_and_replayed_webhooks_are_refused(inbox: Inbox) -> None:
    async with waiting(inbox, "mailgun", "generic") as (hl, client, pending):
        to = pending.reply_to[ALICE]
        old, future = str(int(time.time()) - 301), str(int(time.time()) + 400)
        stale = [
            await post_mailgun(client, to=to, sender=ALICE, text="approve", timestamp=old),
            await post_mailgun(client, to=to, sender=ALICE, text="approve", timestamp=future),
        ]
        body = json.dumps({"from": ALICE, "to": to, "text": "maybe"}).encode()
        stale.append(
            await client.post("/email/inbound/generic", content=body, headers=sign_generic(body, old))
        )
        assert [r.status_code for r in stale] == [401, 401, 401] and "stale" in stale[0].text

        signed = sign_generic(body)
        first = await client.post("/email/inbound/generic", content=body, headers=signed)
        replayed = await client.post("/email/inbound/generic", content=body, headers=signed)
        assert (first.status_code, replayed.status_code) == (422, 401) and "replayed" in replayed.text

        token = secrets.token_hex(25)
        once = await post_mailgun(
            client, to=to, sender=ALICE, text="maybe", token=token, timestamp=str(int(time.time()))
        )
        twice = await post_mailgun(client, to=to, sender=ALICE, text="approve", token=token)
        assert (once.status_code, twice.status_code) == (422, 401)
        assert (await hl.get(pending.request.id)).status is Status.PENDING


class FailingOnce(MemoryStore):
    """A memory store whose first ``decide`` fails, as a database that is briefly unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def decide(self, decision: Decision) -> Decision:
        if self.failures:
            self.failures -= 1
            raise StoreError("connection to the database lost")
        return await super().decide(decision)


def _identical_posts(
    provider: str, to: str, text: str
) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    """One signed webhook, the same bytes each time it is posted (as a provider's retry is)."""
    timestamp, token, message_id = str(int(time.time())), secrets.token_hex(25), "<r1@mail.company.com>"
    body = json.dumps({"from": ALICE, "to": to, "text": text, "headers": {"Message-ID": message_id}}).encode()
    headers = sign_generic(body, timestamp)

    async def post(client: httpx.AsyncClient) -> httpx.Response:
        if provider == "generic":
            return await client.post("/email/inbound/generic", content=body, headers=headers)
        return await post_mailgun(
            client, to=to, sender=ALICE, text=text, timestamp=timestamp, token=token, message_id=message_id
        )

    return post


@pytest.mark.parametrize("provider", ["mailgun", "generic"])
async def test_a_retry_after_the_store_failed_decides(inbox: Inbox, provider: str) -> None:
    store = FailingOnce()
    async with waiting(inbox, provider, store=store) as (hl, client, pending):
        post = _identical_posts(provider, pending.reply_to[ALICE], "deny: wrong account")
        with capture_logs() as logs:
            failed = await post(client)
            assert (await hl.get(pending.request.id)).status is Status.PENDING
            retried = await post(client)
            replayed = await post(client)
        follow_ups = (await inbox.wait(4))[2:]
    assert failed.status_code == 503 and "retry" in failed.text
    assert retried.json() == {"status": "denied"}
    assert replayed.status_code == 401 and "replayed" in replayed.text
    decision = (await hl.get(pending.request.id)).decision
    assert decision is not None and (decision.by, decision.comment) == (ALICE, "wrong account")
    assert [status for status, _ in refusals(logs)] == [503, 401]
    assert sorted(m["To"] for m in follow_ups) == [ALICE, BOB]


class HeldStore(MemoryStore):
    """A memory store whose ``get`` waits while ``held`` is set, as a slow database would."""

    def __init__(self) -> None:
        super().__init__()
        self.held: anyio.Event | None = None

    async def get(self, request_id: str) -> ApprovalRequest:
        if self.held is not None:
            await self.held.wait()
        return await super().get(request_id)


@pytest.mark.parametrize("provider", ["mailgun", "generic"])
async def test_identical_webhooks_in_flight_together_apply_once(inbox: Inbox, provider: str) -> None:
    store = HeldStore()
    async with waiting(inbox, provider, store=store) as (hl, client, pending):
        post = _identical_posts(provider, pending.reply_to[ALICE], "maybe later")
        send, receive = anyio.create_memory_object_stream[httpx.Response](5)

        async def deliver() -> None:
            await send.send(await post(client))

        held = store.held = anyio.Event()
        async with send, receive, anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(deliver)
            duplicates = [await receive.receive() for _ in range(4)]  # while the first one waits
            store.held = None
            held.set()
            first = await receive.receive()
        [help_mail] = (await inbox.wait(3))[2:]
        assert (await hl.get(pending.request.id)).status is Status.PENDING
        assert len(inbox.messages) == 3  # one help reply
    assert [r.status_code for r in duplicates] == [409] * 4 and "being handled" in duplicates[0].text
    assert first.status_code == 422 and help_mail["To"] == ALICE


# -- malformed payloads ----------------------------------------------------------------------


async def test_malformed_payloads_are_400_and_the_listener_goes_on(inbox: Inbox) -> None:
    async with waiting(inbox, *PROVIDERS) as (hl, client, pending):
        to = pending.reply_to[ALICE]
        auth = _basic("inbound", SECRET)

        async def generic(body: bytes) -> httpx.Response:
            return await client.post("/email/inbound/generic", content=body, headers=sign_generic(body))

        async def mailgun_with(**fields: str) -> httpx.Response:
            now, nonce = str(int(time.time())), secrets.token_hex(25)
            signature = hmac.new(SECRET.encode(), (now + nonce).encode(), hashlib.sha256).hexdigest()
            form = {"recipient": to, "from": ALICE, "timestamp": now, "token": nonce, "signature": signature}
            return await client.post("/email/inbound/mailgun", data={**form, **fields})

        with capture_logs() as logs:
            responses = [
                await generic(b"not json"),
                await generic(b"\xff\xfe\x00"),
                await generic(b"[]"),
                await generic(b"[" * 200_000),
                await client.post(
                    "/email/inbound/postmark", content=b'{"Headers": ' + b"[" * 200_000, headers=auth
                ),
                await generic(json.dumps({"from": 5, "to": to, "text": "approve"}).encode()),
                await generic(json.dumps({"from": ALICE, "to": 7, "text": "approve"}).encode()),
                await generic(json.dumps({"from": ALICE, "to": to, "text": {"a": 1}}).encode()),
                await generic(json.dumps({"from": ALICE, "to": to, "text": "yes", "headers": []}).encode()),
                await generic(json.dumps({"from": ALICE, "to": to, "headers": {"A": 1}}).encode()),
                await generic(json.dumps({"to": to, "text": "approve"}).encode()),
                await generic(json.dumps({"from": "nobody", "to": to, "text": "approve"}).encode()),
                await mailgun_with(**{"message-headers": "{not json"}),
                await mailgun_with(**{"message-headers": '[["only-a-name"]]'}),
                await mailgun_with(**{"message-headers": '{"a": "b"}'}),
                await mailgun_with(**{"from": ""}),
                await client.post(
                    "/email/inbound/sendgrid",
                    content=b'--xyz\r\nContent-Disposition: form-data; name="to"\r\n\r\nno end',
                    headers={**auth, "Content-Type": "multipart/form-data; boundary=xyz"},
                ),
                await client.post(
                    "/email/inbound/sendgrid", data={"from": ALICE, "to": to, "envelope": "{"}, headers=auth
                ),
                await client.post("/email/inbound/postmark", content=b"{", headers=auth),
                await client.post("/email/inbound/postmark", json=[1, 2], headers=auth),
                await client.post("/email/inbound/postmark", json={"FromFull": {"Email": 7}}, headers=auth),
                await client.post(
                    "/email/inbound/postmark", json={"From": ALICE, "Headers": "x"}, headers=auth
                ),
                await client.post(
                    "/email/inbound/postmark", json={"From": ALICE, "Headers": [{"Name": 1}]}, headers=auth
                ),
                await client.post(
                    "/email/inbound/postmark", json={"From": ALICE, "TextBody": ["approve"]}, headers=auth
                ),
            ]
            assert (await client.get("/healthz")).text == "ok"
            assert (await hl.get(pending.request.id)).status is Status.PENDING
    assert [r.status_code for r in responses] == [400] * len(responses), [r.text for r in responses]
    assert len(refusals(logs)) == len(responses)


def _mutate(value: Any, rng: random.Random) -> Any:
    """``value`` with one part dropped or replaced by something of another type."""
    junk = [None, 0, -1.5, True, "", "x" * 300, [], {}, [["a", 1]], {"Email": None}, "\x00\ud800"]
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        mutated = dict(value)
        if rng.random() < 0.3:
            del mutated[key]
        else:
            mutated[key] = _mutate(value[key], rng) if rng.random() < 0.3 else rng.choice(junk)
        return mutated
    if isinstance(value, list) and value:
        index = rng.randrange(len(value))
        return [*value[:index], _mutate(value[index], rng), *value[index + 1 :]]
    return rng.choice(junk)


async def test_mutated_payloads_never_make_a_500(inbox: Inbox) -> None:
    rng = random.Random(4)
    async with waiting(inbox, "postmark", "generic") as (hl, client, pending):
        to = pending.reply_to[ALICE]
        postmark = {
            "From": ALICE,
            "FromFull": {"Email": ALICE, "Name": "Alice"},
            "ToFull": [{"Email": to, "MailboxHash": to.partition("+")[2].partition("@")[0]}],
            "OriginalRecipient": to,
            "MailboxHash": "",
            "TextBody": "maybe",
            "StrippedTextReply": "maybe",
            "Headers": [{"Name": "Received-SPF", "Value": f"Pass identity=mailfrom; envelope-from={ALICE}"}],
        }
        generic = {"from": ALICE, "to": [to], "text": "maybe", "headers": {"Message-ID": "<m@x>"}}
        statuses: set[int] = set()
        for _ in range(25):
            body = json.dumps(_mutate(postmark, rng)).encode("utf-8", "surrogatepass")
            response = await client.post(
                "/email/inbound/postmark", content=body, headers=_basic("pm", SECRET)
            )
            statuses.add(response.status_code)
            body = json.dumps(_mutate(generic, rng)).encode("utf-8", "surrogatepass")
            response = await client.post("/email/inbound/generic", content=body, headers=sign_generic(body))
            statuses.add(response.status_code)
        assert (await hl.get(pending.request.id)).status is Status.PENDING
    assert statuses and max(statuses) < 500 and min(statuses) >= 400, statuses
    assert {400, 422} <= statuses


async def test_header_injection_and_unencodable_text_in_a_reply_are_harmless(inbox: Inbox) -> None:
    channel = make_channel(inbox, "generic")
    async with running(channel) as (hl, client), anyio.create_task_group() as tg:
        outcomes = Outcomes(tg)
        outcomes.start(lambda: hl.human_as_tool()("Which region, \ud800?"))
        [request] = await wait_for_pending(hl, within=5)
        question = (await inbox.wait(2))[0]
        assert question["Subject"] == "[Question] Which region, ??"
        injected = "<r1@mail.company.com>\r\nBcc: victim@evil.example"
        body = json.dumps(
            {
                "from": ALICE,
                "to": question["Reply-To"],
                "text": "> quoted only",
                "headers": {"Message-ID": injected},
            }
        ).encode()
        empty = await client.post("/email/inbound/generic", content=body, headers=sign_generic(body))
        assert empty.status_code == 422
        [help_mail] = (await inbox.wait(3))[2:]
        answer = await post_generic(client, to=question["Reply-To"], sender=ALICE, text="eu-west-1 \ud800")
        assert answer.json() == {"status": "approved"}
        follow_ups = (await inbox.wait(5))[3:]
    assert help_mail["In-Reply-To"] == f"<hl.{request.id}.0@company.com>" and "Bcc" not in help_mail
    assert "no answer above the quoted message" in text_of(help_mail)
    assert outcomes.ended == ["eu-west-1 ?"]
    assert all("answered by alice@company.com via email" in text_of(m) for m in follow_ups)
