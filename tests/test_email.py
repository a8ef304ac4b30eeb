"""EmailChannel end to end: a real SMTP server (aiosmtpd) on loopback receives the requests;
replies, in each provider's format and signed as it signs, reach the running listener over HTTP."""

from __future__ import annotations

import contextlib
import re
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, cast

import anyio
import pytest
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalTimeout,
    ChannelError,
    ConfigurationError,
    Decision,
    Status,
)
from humanlayer_async._render import full_call
from humanlayer_async.channels import EmailChannel
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import wait_for_pending

from .conftest import (
    ALICE,
    BOB,
    Inbox,
    LateDecider,
    Outcomes,
    make_channel,
    make_request,
    post_generic,
    post_mailgun,
    post_reply,
    running,
    serving,
    text_of,
)

pytestmark = pytest.mark.anyio

REPLY_TO = re.compile(r"^approvals\+([a-z2-7]{44})@replies\.company\.com$")


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return cast(str, cast(EmailMessage, part).get_content())


# -- the request, and decisions through every provider -----------------------------------------

GMAIL_QUOTE = (
    "\n\nOn Tue, Nov 25, 2026 at 10:02 AM Approvals <\napprovals+x@replies.company.com> wrote:\n"
    "> An agent wants to make this call\n> approve\n"
)


async def test_request_mail_then_approve_by_mailgun_reply_and_follow_ups(inbox: Inbox) -> None:
    channel = make_channel(inbox)
    async with running(channel) as (hl, client), anyio.create_task_group() as tg:

        @hl.require_approval(context={"customer": "ACME <corp>"})
        async def send_email(to: str, subject: str, api_key: str = "sk-live-123") -> str:
            """Send an email to a customer."""
            return f"sent to {to}"

        outcomes = Outcomes(tg)
        outcomes.start(lambda: send_email("bob@acme.com", "Renewal"))
        [request] = await wait_for_pending(hl, within=5)
        sent = await inbox.wait(2)
        assert sorted(m["To"] for m in sent) == [ALICE, BOB]
        to_alice = inbox.received_by(ALICE)[0]
        assert to_alice["Subject"].startswith("[Approval needed] send_email(to='bob@acme.com'")
        assert to_alice["From"] == "Approvals <approvals@company.com>"
        assert to_alice["Date"] and to_alice["Message-ID"] == f"<hl.{request.id}.0@company.com>"
        tokens = {m["To"]: REPLY_TO.fullmatch(m["Reply-To"]) for m in sent}
        assert all(tokens.values()) and tokens[ALICE] != tokens[BOB]
        assert len(to_alice["Reply-To"].partition("@")[0]) <= 64
        body = text_of(to_alice)
        for expected in (
            "send_email(",
            "Send an email to a customer.",
            "subject: Renewal",
            "customer: ACME <corp>",
        ):
            assert expected in body
        assert f"Expires: {request.expires_at:%Y-%m-%d %H:%M:%S} UTC" in body
        assert "deny: <reason>" in body and "api_key: ***" in body and "sk-live-123" not in body
        assert "ACME &lt;corp&gt;" in html_of(to_alice) and "sk-live-123" not in html_of(to_alice)

        response = await post_mailgun(
            client,
            to=to_alice["Reply-To"],
            sender="Alice Example <Alice@Company.com>",
            text="Approved, go ahead" + GMAIL_QUOTE,
            stripped="Approved, go ahead",
        )
        assert response.status_code == 200 and response.json() == {"status": "approved"}
        follow_ups = (await inbox.wait(4))[2:]
    assert outcomes.ended == ["sent to bob@acme.com"]
    decided = await hl.get(request.id)
    assert decided.decision is not None
    assert (decided.decision.by, decided.decision.via, decided.decision.comment) == (
        ALICE,
        "email",
        "go ahead",
    )
    assert sorted(m["To"] for m in follow_ups) == [ALICE, BOB]
    for follow_up in follow_ups:
        index = 0 if follow_up["To"] == ALICE else 1
        assert follow_up["In-Reply-To"] == follow_up["References"] == f"<hl.{request.id}.{index}@company.com>"
        assert follow_up["Subject"] == f"Re: {to_alice['Subject']}"
        assert f"approved by {ALICE} via email at " in text_of(follow_up) and "(go ahead)" in text_of(
            follow_up
        )


OUTLOOK_REPLY = (
    "deny: vendor not verified\r\n\r\nBob\r\n\r\n"
    "-----Original Message-----\r\nFrom: Approvals <approvals@company.com>\r\n"
    "Sent: Tuesday, November 25, 2026 10:02 AM\r\nTo: Bob\r\nSubject: [Approval needed]\r\n\r\n"
    "approve\r\n"
)


@pytest.mark.parametrize("provider", ["sendgrid", "postmark", "generic"])
async def test_deny_with_reason_from_an_outlook_reply(inbox: Inbox, provider: str) -> None:
    channel = make_channel(inbox, provider)
    async with running(channel) as (hl, client), anyio.create_task_group() as tg:

        @hl.require_approval()
        async def pay_invoice(vendor: str, amount: float) -> str:
            return "paid"

        outcomes = Outcomes(tg)
        outcomes.start(lambda: pay_invoice("Initech", 1200.0))
        [request] = await wait_for_pending(hl, within=5)
        await inbox.wait(2)
        reply_to = inbox.received_by(BOB)[0]["Reply-To"]
        response = await post_reply(provider, client, to=reply_to, sender=f"Bob <{BOB}>", text=OUTLOOK_REPLY)
        assert response.status_code == 200 and response.json() == {"status": "denied"}
    [outcome] = outcomes.ended
    assert isinstance(outcome, ApprovalDenied)
    assert (outcome.decision.by, outcome.decision.comment) == (BOB, "vendor not verified")
    assert (await hl.get(request.id)).status is Status.DENIED


async def test_human_as_tool_answer_is_the_reply_without_quotes(inbox: Inbox) -> None:
    channel = make_channel(inbox, "generic")
    async with running(channel) as (hl, client), anyio.create_task_group() as tg:
        ask = hl.human_as_tool()
        outcomes = Outcomes(tg)
        outcomes.start(lambda: ask("Which region should the new cluster go to?"))
        await wait_for_pending(hl, within=5)
        question = (await inbox.wait(2))[0]
        assert question["Subject"] == "[Question] Which region should the new cluster go to?"
        assert "Which region should the new cluster go to?" in text_of(question)
        text = "eu-west-1, close to the customers.\nNot us-east.\n\nOn Tue, A wrote:\n> Which region?\n"
        response = await post_generic(client, to=question["Reply-To"], sender=question["To"], text=text)
        assert response.json() == {"status": "approved"}
    assert outcomes.ended == ["eu-west-1, close to the customers.\nNot us-east."]


async def test_a_late_reply_gets_who_decided_first(inbox: Inbox) -> None:
    channel = make_channel(inbox)
    async with running(channel) as (hl, client), anyio.create_task_group() as tg:

        @hl.require_approval()
        async def deploy() -> str:
            return "deployed"

        Outcomes(tg).start(deploy)
        await wait_for_pending(hl, within=5)
        await inbox.wait(2)
        alice, bob = inbox.received_by(ALICE)[0], inbox.received_by(BOB)[0]
        first = await post_mailgun(client, to=alice["Reply-To"], sender=ALICE, text="lgtm")
        assert first.status_code == 200
        with capture_logs() as logs:
            late = await post_mailgun(client, to=bob["Reply-To"], sender=BOB, text="no")
        assert late.status_code == 409 and late.text.startswith(f"already approved by {ALICE} via email")
    assert any(e["event"] == "listener.refused" and e["status"] == 409 for e in logs)


@pytest.mark.parametrize(
    ("by", "told"),
    [
        # Bob's reply was stored between reading the request and deciding it.
        (BOB, f"already approved by {BOB} via email"),
        # Alice's own earlier reply (her mail client sent it twice): by and via are hers,
        # yet this reply is not the one that stands.
        (ALICE, f"already approved by {ALICE} via email"),
    ],
)
async def test_a_reply_that_did_not_stand_gets_who_decided_first(inbox: Inbox, by: str, told: str) -> None:
    request = make_request("d" * 32, approvers=())
    decider = LateDecider(
        request, Decision(request.id, True, Status.APPROVED, by, "email", None, datetime.now(UTC))
    )
    channel = make_channel(inbox)
    async with anyio.create_task_group() as tg:
        await tg.start(channel.run, decider)
        async with serving(channel.routes()) as client:
            with capture_logs() as logs:
                to = channel._reply_address(request.id, 0)
                response = await post_mailgun(client, to=to, sender=ALICE, text="approve")
        tg.cancel_scope.cancel()
    assert decider.answers == [(request.id, ALICE, "email")]
    assert response.status_code == 409 and response.text.startswith(told)
    [refused] = [e for e in logs if e["event"] == "listener.refused"]
    assert (refused["status"], refused["request_id"], refused["sender"]) == (409, request.id, ALICE)
    assert refused["reason"].startswith(told) and refused["path"] == "/email/inbound/mailgun"


def attachments_of(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_attachments())


async def test_nothing_is_shortened_silently_and_the_full_call_is_attached(inbox: Inbox) -> None:
    channel = make_channel(inbox, to=ALICE)
    ticket: dict[str, Any] = {"a": {"b": {"c": {"note": "context-fourth-level"}}}}
    async with running(channel) as (hl, _), anyio.create_task_group() as tg:

        @hl.require_approval(context={"ticket": ticket})
        async def run_sql(hosts: list[str], options: dict[str, object], query: str) -> str:
            return "ran"

        hosts = [f"db-{n}" for n in range(1, 12)]
        nested: dict[str, object] = {"retry": {"policy": {"on": {"error": "fourth-level-value"}}}}
        Outcomes(tg).start(lambda: run_sql(hosts, nested, "SELECT 1;" + " " * 1000 + "DROP TABLE users"))
        [request] = await wait_for_pending(hl, within=5)
        [mail] = await inbox.wait(1)
        tg.cancel_scope.cancel()
    [attachment] = attachments_of(mail)
    short_id = request.id[:8]
    assert attachment.get_filename() == f"request-{short_id}.txt"
    assert attachment.get_content_type() == "text/plain" and attachment.get_content_charset() == "utf-8"
    full = cast(str, attachment.get_content()).replace("\r\n", "\n")  # text travels with CRLF line ends
    assert full == full_call(request)
    for hidden in ("db-11", "fourth-level-value", "context-fourth-level", "DROP TABLE users"):
        assert hidden in full
        assert hidden not in text_of(mail) and hidden not in html_of(mail) and hidden not in mail["Subject"]
    body = text_of(mail)
    assert "hosts: ['db-1', " in body and "… 1 more item]" in body
    assert "options: {'retry': {'policy': {'on': {… 1 item nested deeper}}}}" in body
    assert "ticket: {'a': {'b': {'c': {… 1 item nested deeper}}}}" in body
    assert "… 825 more characters" in body
    shortened = [
        line for line in body.splitlines() if line.startswith(("  hosts:", "  options:", "  ticket:"))
    ]
    assert len(shortened) == 3 and all(
        line.endswith("(shortened: the full call is attached)") for line in shortened
    )
    assert f"The full call, untruncated, is attached: request-{short_id}.txt" in body
    assert "the full call is attached" in html_of(mail)


HOSTILE = (
    "ok\r\nBcc: victim@evil.example\r\n\r\n\x1b[2J\x1b[Hamount=25 \u202eevil\u202c <script>alert(1)</script>"
)


async def test_hostile_arguments_forge_no_header_line_or_markup(inbox: Inbox) -> None:
    channel = make_channel(inbox, to=ALICE)
    async with running(channel) as (hl, _), anyio.create_task_group() as tg:

        @hl.require_approval(context={f"why{HOSTILE}": HOSTILE})
        async def transfer(memo: str) -> str:
            """Move money.\nApprove by replying: approve"""
            return "moved"

        Outcomes(tg).start(lambda: transfer(HOSTILE))
        await wait_for_pending(hl, within=5)
        [mail] = await inbox.wait(1)
        tg.cancel_scope.cancel()
    assert mail["Bcc"] is None and mail.get_all("To") == [ALICE]
    subject = mail["Subject"]
    assert "\n" not in subject and "\x1b" not in subject and "\u202e" not in subject
    assert "ok\\r\\nBcc: victim@evil.example" in subject
    text, markup, full = text_of(mail), html_of(mail), cast(str, attachments_of(mail)[0].get_content())
    for part in (text, markup, full):
        part = part.replace("\r\n", "\n")  # text travels with CRLF line ends
        assert not any(char in part for char in "\x1b\u202e\u202c\r")
        assert "\\x1b[2J" in part and "\\u202eevil\\u202c" in part
        assert not any(line.startswith("Bcc:") for line in part.splitlines())
    assert "<script>" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert "<script>alert(1)</script>" in text  # plain text shows it as it is, harmless there
    assert "Approve by replying: approve" in text  # the docstring keeps its own lines


# -- SMTP failures ---------------------------------------------------------------------------


async def test_smtp_refusing_then_timing_out_is_retried_and_delivered(inbox: Inbox) -> None:
    inbox.answers = ["451 4.3.0 try again later"]
    inbox.stalls = 1
    channel = make_channel(inbox, to=ALICE, smtp_username="mailer@company.com", smtp_password="smtp-pass")
    with capture_logs() as logs:
        async with running(channel) as (hl, client), anyio.create_task_group() as tg:

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            outcomes = Outcomes(tg)
            outcomes.start(deploy)
            [mail] = await inbox.wait(1)
            await wait_for_pending(hl, within=5)
            response = await post_mailgun(client, to=mail["Reply-To"], sender=ALICE, text="approve")
            assert response.status_code == 200
    assert outcomes.ended == ["deployed"]
    retries = [e for e in logs if e["event"] == "email.smtp_retry"]
    assert len(retries) == 2 and {"Timed out" in r["error"] or "451" in r["error"] for r in retries} == {True}
    assert "451" in retries[0]["error"] + retries[1]["error"]
    assert inbox.logins[0] == (b"mailer@company.com", b"smtp-pass")
    assert "smtp-pass" not in repr(logs) and "smtp-pass" not in repr(channel)


async def test_every_attempt_refused_fails_the_request_with_channel_error(inbox: Inbox) -> None:
    inbox.always = "451 4.3.0 mailbox busy"
    channel = make_channel(inbox)
    with capture_logs() as logs:
        async with running(channel) as (hl, _):

            @hl.require_approval(on_reject="return")
            async def deploy() -> str:
                return "deployed"

            with pytest.raises(ChannelError, match="451"):
                await deploy()
            [request_id] = [e["request_id"] for e in logs if e["event"] == "approval.requested"]
            failed = await hl.get(request_id)
    assert failed.status is Status.FAILED
    assert failed.decision is not None and "email" in (failed.decision.comment or "")
    # retry_delays, exactly: (0.05, 0.1) in these tests, then no more tries.
    retries = [(e["attempt"], e["retry_in"]) for e in logs if e["event"] == "email.smtp_retry"]
    assert retries == [(1, 0.05), (2, 0.1)]
    assert inbox.messages == []


async def test_an_unreachable_server_is_a_channel_error(inbox: Inbox) -> None:
    with socket_closed() as port:
        channel = make_channel(inbox)
        channel.smtp_port = port
        async with running(channel) as (hl, _):

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            with pytest.raises(ChannelError, match="could not deliver"):
                await deploy()


@contextlib.contextmanager
def socket_closed() -> Any:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


async def test_a_recipient_refused_for_good_is_not_retried_and_gets_no_follow_up(inbox: Inbox) -> None:
    inbox.unknown = {BOB}
    channel = make_channel(inbox)
    with capture_logs() as logs:
        async with running(channel) as (hl, client), anyio.create_task_group() as tg:

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            Outcomes(tg).start(deploy)
            [request] = await wait_for_pending(hl, within=5)
            [mail] = await inbox.wait(1)
            assert mail["To"] == ALICE
            assert (
                await post_mailgun(client, to=mail["Reply-To"], sender=ALICE, text="yes")
            ).status_code == 200
            await inbox.wait(2)
    assert [m["To"] for m in inbox.messages] == [ALICE, ALICE]
    assert inbox.messages[1]["In-Reply-To"] == f"<hl.{request.id}.0@company.com>"
    assert not [e for e in logs if e["event"] == "email.smtp_retry"]
    assert [e["to"] for e in logs if e["event"] == "email.undelivered"] == [[BOB]]


async def test_timeout_and_cancellation_follow_ups(inbox: Inbox) -> None:
    channel = make_channel(inbox, to=ALICE)
    async with running(channel, timeout=0.3) as (hl, _):

        @hl.require_approval()
        async def deploy() -> str:
            return "deployed"

        @hl.require_approval(timeout=60)
        async def rollback() -> str:
            return "rolled back"

        with pytest.raises(ApprovalTimeout):
            await deploy()
        async with anyio.create_task_group() as tg:
            tg.start_soon(rollback)
            # Cancelled once its request is delivered (a loaded machine may take a while).
            store = hl.store
            assert isinstance(store, MemoryStore)
            with anyio.fail_after(10):
                while sum(entry.event == "approval.delivered" for entry in store.audit_log) < 2:
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        messages = await inbox.wait(4)
    requests = {m["Subject"].split("] ")[1]: m for m in messages if "In-Reply-To" not in m}
    follow_ups = {m["In-Reply-To"]: text_of(m) for m in messages if "In-Reply-To" in m}
    assert "timed out via timeout" in follow_ups[requests["deploy()"]["Message-ID"]]
    assert "cancelled via caller" in follow_ups[requests["rollback()"]["Message-ID"]]


# -- configuration ---------------------------------------------------------------------------


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_HOST", "smtp.company.com")
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.setenv("SMTP_USERNAME", "approvals@company.com")
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2-smtp")
    monkeypatch.setenv("HUMANLAYER_SECRET", "fleet-secret")
    channel = EmailChannel(to="approvals@company.com", inbound_secret="whsec-abc")
    assert (channel.smtp_host, channel.smtp_port, channel.sender) == (
        "smtp.company.com",
        2525,
        "approvals@company.com",
    )
    assert channel.reply_to == "approvals@company.com" and channel.approvers == ("approvals@company.com",)
    assert [route.path for route in channel.routes()] == ["/email/inbound/generic"]  # type: ignore[attr-defined]
    shown = repr(channel)
    assert "smtp.company.com" in shown
    for secret in ("hunter2-smtp", "fleet-secret", "whsec-abc"):
        assert secret not in shown


def test_a_missing_host_or_sender_and_bad_values_name_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="SMTP_HOST"):
        EmailChannel(to="a@company.com", sender="b@company.com")
    with pytest.raises(ConfigurationError, match="sender="):
        EmailChannel(to="a@company.com", smtp_host="localhost")
    with pytest.raises(ConfigurationError, match="inbound must be one of"):
        EmailChannel(to="a@company.com", sender="b@company.com", smtp_host="h", inbound="imap")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at most 19"):
        EmailChannel(to="a@company.com", sender="a-very-long-approvals-box@company.com", smtp_host="h")
    with pytest.raises(ConfigurationError, match="to must be"):
        EmailChannel(to="not an address", sender="b@company.com", smtp_host="h")
    with pytest.raises(ConfigurationError, match="exclude each other"):
        EmailChannel(to="a@company.com", sender="b@company.com", smtp_host="h", use_tls=True, start_tls=True)
    monkeypatch.setenv("SMTP_PORT", "smtp")
    with pytest.raises(ConfigurationError, match="SMTP_PORT"):
        EmailChannel(to="a@company.com", sender="b@company.com", smtp_host="h")


def test_without_a_token_secret_a_random_key_and_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUMANLAYER_SECRET", raising=False)
    with capture_logs() as logs:
        first = EmailChannel(to="a@company.com", sender="b@company.com", smtp_host="h", smtp_port=25)
        second = EmailChannel(to="a@company.com", sender="b@company.com", smtp_host="h", smtp_port=25)
    assert [e["event"] for e in logs] == ["email.ephemeral_token_key"] * 2
    request_id = secrets.token_hex(16)
    token = first._reply_address(request_id, 0).partition("+")[2].partition("@")[0]
    assert first._tokens.read(token, first.to) == (request_id, 0)
    assert second._tokens.read(token, second.to) is None
