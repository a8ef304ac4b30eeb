"""Fixtures (found by name) and helpers (``from .conftest import ...``) shared by several test modules."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from anyio.abc import TaskGroup
from starlette.routing import BaseRoute

from humanlayer_async import (
    ApprovalDenied,
    ApprovalRequest,
    Decision,
    HumanLayer,
    Principal,
    Status,
    UnknownRequest,
)
from humanlayer_async.channels import EmailChannel
from humanlayer_async.channels.base import Answered
from humanlayer_async.listener import Listener, build_app

from .fake_slack import FakeSlack


def _watched_loop() -> asyncio.AbstractEventLoop:
    # asyncio's debug mode logs every callback that holds the loop longer than this.
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 1.0
    return loop


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"loop_factory": _watched_loop}


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and "took" in message:
            self.messages.append(message)


@pytest.fixture(autouse=True)
def _loop_never_blocks() -> Iterator[None]:
    """Fail a test during which any callback held the event loop for over a second."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"the event loop was blocked: {handler.messages}"


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    # Events are still processed (so capture_logs sees them), then dropped instead of printed.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()


# -- durable stores: real PostgreSQL (HUMANLAYER_TEST_DSN) and real SQLite files ----------

PG_DSN = os.environ.get("HUMANLAYER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_run(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's DSN; skips when it is unreachable, except under CI=true (fails)."""
    try:
        _pg_run("SELECT 1")
    except Exception as exc:
        reason = f"PostgreSQL is unreachable at HUMANLAYER_TEST_DSN ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of its own for one test (parallel runs never meet), dropped afterwards."""
    schema = f"hl_test_{secrets.token_hex(6)}"
    yield schema
    _pg_run(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A durable store's URL: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'approvals.db'}"
    return f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"


# -- Slack: the fake Web API and Socket Mode server (tests/fake_slack.py) -----------------


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def no_slack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Slack setting of the developer's shell reaches the channels under test."""
    for variable in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_APPROVAL_CHANNEL"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def slack(fake_slack: FakeSlack, no_slack_environment: None) -> FakeSlack:
    """The fake Slack, with no Slack setting from the environment."""
    return fake_slack


# -- requests and decisions made directly, as a store holds them --------------------------


def make_request(
    request_id: str, *, run_id: str | None = None, lifetime: float = 600, **extra: object
) -> ApprovalRequest:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "kind": "approval",
        "function": "transfer",
        "kwargs": {"amount": 5},
        "context": {"env": "prod"},
        "approvers": ("cfo",),
        "doc": "Move money.",
        **extra,
    }
    return ApprovalRequest(
        id=request_id,
        created_at=now,
        expires_at=now + timedelta(seconds=lifetime),
        run_id=run_id,
        **fields,  # type: ignore[arg-type]
    )


def decision(request_id: str, approved: bool, by: str) -> Decision:
    status = Status.APPROVED if approved else Status.DENIED
    return Decision(request_id, approved, status, by, "api", None, datetime.now(UTC).replace(microsecond=0))


# -- gated calls run in a task group ------------------------------------------------------


class Outcomes:
    """Gated calls running in a task group, and how each ended (result or refusal)."""

    def __init__(self, task_group: TaskGroup) -> None:
        self.task_group = task_group
        self.ended: list[object] = []

    def start(self, call: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            try:
                self.ended.append(await call())
            except ApprovalDenied as exc:
                self.ended.append(exc)

        self.task_group.start_soon(run)


# -- the real listener, and a Decider whose every answer lost a race ----------------------


class LateDecider:
    """A ``Decider`` whose every answer lost a race: ``request`` reads as pending, yet
    ``standing`` (someone else's decision, or an earlier one of the same person) was stored
    first, so each ``decide``/``respond`` returns it with ``stands=False``."""

    def __init__(self, request: ApprovalRequest, standing: Decision) -> None:
        self.request, self.standing = request, standing
        self.answers: list[tuple[str, str, str]] = []  # (request id, by, via) of each answer given

    async def decide(
        self,
        request_id: str,
        approved: bool,
        *,
        by: str | Principal,
        comment: str | None = None,
        via: str,
        **more: object,  # edits, grant, seen: the answer loses the race whatever they say
    ) -> Answered:
        self.answers.append((request_id, by.id if isinstance(by, Principal) else by, via))
        return Answered(self.standing, stands=False)

    async def respond(self, request_id: str, text: str, *, by: str | Principal, via: str) -> Answered:
        self.answers.append((request_id, by.id if isinstance(by, Principal) else by, via))
        return Answered(self.standing, stands=False)

    async def get(self, request_id: str) -> ApprovalRequest:
        if request_id != self.request.id:
            raise UnknownRequest(request_id)
        return self.request

    async def pending(self, **filters: Any) -> list[ApprovalRequest]:
        return [self.request]

    async def count_pending(self, **filters: Any) -> int:
        return 1

    async def claim(self, key: str, expires_at: datetime) -> bool:
        return True


@contextlib.asynccontextmanager
async def serving(routes: Sequence[BaseRoute]) -> AsyncIterator[httpx.AsyncClient]:
    """``routes`` served by the real listener on a loopback port, and a client of it."""
    listener = Listener(build_app(routes), "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.serve)
        async with httpx.AsyncClient(base_url=listener.url) as client:
            yield client
        tg.cancel_scope.cancel()


# -- email: a real SMTP server (aiosmtpd) on loopback, and channels that send to it -------

SECRET = "inbound-signing-key-0123"
TOKEN_SECRET = "reply-token-key-4567"
ALICE = "alice@company.com"
BOB = "bob@company.com"


class Inbox:
    """An aiosmtpd handler served on the test's own event loop: keeps what it accepts.

    ``answers`` are DATA replies to give (in order) before accepting; ``stalls`` DATA
    commands hang until the test ends; ``unknown`` addresses are refused for good.
    """

    def __init__(self) -> None:
        self.port = 0
        self.messages: list[EmailMessage] = []
        self.answers: list[str] = []
        self.always: str | None = None
        self.stalls = 0
        self.unknown: set[str] = set()
        self.logins: list[tuple[bytes, bytes]] = []
        self.release = asyncio.Event()
        self._arrived = asyncio.Event()  # set at each accepted message

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.unknown:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.stalls:
            self.stalls -= 1
            await self.release.wait()
        if self.always:
            return self.always
        if self.answers:
            return self.answers.pop(0)
        self.messages.append(message_from_bytes(cast(bytes, envelope.content), policy=policy.default))
        self._arrived.set()
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> Any:
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"smtp-pass")

    async def wait(self, count: int) -> list[EmailMessage]:
        """The messages received, once there are ``count``."""
        with anyio.fail_after(5):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.messages)

    def received_by(self, address: str) -> list[EmailMessage]:
        return [message for message in self.messages if message["To"] == address]


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    loop = asyncio.get_running_loop()
    box = Inbox()
    server = await loop.create_server(
        lambda: SMTP(box, loop=loop, authenticator=box.authenticate, auth_require_tls=False),
        "127.0.0.1",
        0,
    )
    box.port = server.sockets[0].getsockname()[1]
    yield box
    box.release.set()
    server.close()
    await server.wait_closed()


def make_channel(inbox: Inbox, provider: str = "mailgun", **options: Any) -> EmailChannel:
    channel = EmailChannel(
        options.pop("to", [ALICE, BOB]),
        sender="Approvals <approvals@company.com>",
        smtp_host="127.0.0.1",
        smtp_port=inbox.port,
        reply_to="approvals@replies.company.com",
        inbound=provider,  # type: ignore[arg-type]
        inbound_secret=SECRET,
        token_secret=TOKEN_SECRET,
        **options,
    )
    channel.smtp_timeout = 0.5
    channel.retry_delays = (0.05, 0.1)
    return channel


@contextlib.asynccontextmanager
async def running(
    channel: EmailChannel, **options: Any
) -> AsyncIterator[tuple[HumanLayer, httpx.AsyncClient]]:
    """``channel`` in a ``HumanLayer`` listening on a loopback port, and a client of its listener."""
    async with HumanLayer([channel], listen="127.0.0.1:0", **options) as hl:
        assert hl.url is not None
        async with httpx.AsyncClient(base_url=hl.url) as client:
            yield hl, client


# -- inbound-mail replies, in each provider's format and signed as it signs ---------------


def _message_id() -> str:
    return f"<{secrets.token_hex(8)}@mail.company.com>"


MAILGUN_PASS = (("X-Mailgun-Dkim-Check-Result", "Pass"), ("X-Mailgun-Spf", "Pass"))
"""The verdicts Mailgun puts on top of ``message-headers`` for a mail that passed its checks."""


async def post_mailgun(
    client: httpx.AsyncClient,
    *,
    to: str,
    sender: str,
    text: str,
    stripped: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    verdicts: Sequence[tuple[str, str]] = MAILGUN_PASS,
    envelope: str | None = None,
    timestamp: str | None = None,
    token: str | None = None,
    key: str = SECRET,
    message_id: str | None = None,
) -> httpx.Response:
    """A Mailgun route's post; ``envelope`` is the SMTP ``MAIL FROM`` (default: the From address)."""
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    token = token or secrets.token_hex(25)
    envelope = parseaddr(sender)[1] if envelope is None else envelope
    message_headers = [
        *map(list, verdicts),
        ["X-Mailgun-Incoming", "Yes"],
        ["X-Envelope-From", f"<{envelope}>"],
        ["Received", "from mail.company.com by mxa.mailgun.org with ESMTP"],
        ["Message-Id", message_id or _message_id()],
        ["From", sender],
        *map(list, headers),
    ]
    fields = {
        "recipient": to,
        "sender": envelope,
        "from": sender,
        "subject": "Re: [Approval needed]",
        "body-plain": text,
        "message-headers": json.dumps(message_headers),
        "timestamp": timestamp,
        "token": token,
        "signature": hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest(),
    }
    if stripped is not None:
        fields["stripped-text"] = stripped
    return await client.post("/email/inbound/mailgun", files={k: (None, v) for k, v in fields.items()})


async def post_sendgrid(
    client: httpx.AsyncClient,
    *,
    to: str,
    sender: str,
    text: str,
    headers: str = "",
    spf: str | None = "pass",
    dkim: str | None = "{@company.com : pass}",
    envelope: str | None = None,
    password: str = SECRET,
) -> httpx.Response:
    """An Inbound Parse post; ``spf`` or ``dkim`` ``None`` leaves the field out."""
    raw_headers = f"Message-ID: {_message_id()}\nFrom: {sender}\nTo: {to}\nSubject: Re: request\n{headers}"
    fields = {
        "headers": raw_headers,
        "to": to,
        "from": sender,
        "text": text,
        "subject": "Re: request",
        "envelope": json.dumps({"to": [to], "from": parseaddr(sender)[1] if envelope is None else envelope}),
        "charsets": json.dumps({"to": "UTF-8", "text": "UTF-8"}),
        "sender_ip": "203.0.113.9",
    }
    fields.update({name: value for name, value in (("SPF", spf), ("dkim", dkim)) if value is not None})
    return await client.post(
        "/email/inbound/sendgrid", files={k: (None, v) for k, v in fields.items()}, auth=("parse", password)
    )


async def post_postmark(
    client: httpx.AsyncClient,
    *,
    to: str,
    sender: str,
    text: str,
    stripped: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    password: str = SECRET,
    spf: str | None = "Pass",
    envelope: str | None = None,
) -> httpx.Response:
    """An inbound webhook post, with the ``Received-SPF`` Postmark adds (none when ``spf`` is ``None``)."""
    name, address = parseaddr(sender)
    mailbox_hash = to.partition("@")[0].rpartition("+")[2]
    received_spf = (
        f"{spf} (sender SPF authorized) identity=mailfrom; client-ip=203.0.113.9; helo=mail.company.com; "
        f"envelope-from={address if envelope is None else envelope}; receiver={to}"
    )
    payload = {
        "From": address,
        "FromName": name,
        "FromFull": {"Email": address, "Name": name, "MailboxHash": ""},
        "To": to,
        "ToFull": [{"Email": to, "Name": "", "MailboxHash": mailbox_hash}],
        "OriginalRecipient": to,
        "MailboxHash": mailbox_hash,
        "Subject": "Re: request",
        "MessageID": secrets.token_hex(8),
        "TextBody": text,
        "StrippedTextReply": stripped or "",
        "Headers": [
            *([{"Name": "Received-SPF", "Value": received_spf}] if spf is not None else []),
            {"Name": "Message-ID", "Value": _message_id()},
            *({"Name": k, "Value": v} for k, v in headers),
        ],
    }
    return await client.post("/email/inbound/postmark", json=payload, auth=("postmark", password))


def sign_generic(body: bytes, timestamp: str | None = None, key: str = SECRET) -> dict[str, str]:
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    digest = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Timestamp": timestamp, "X-Signature": f"sha256={digest}", "Content-Type": "application/json"}


async def post_generic(
    client: httpx.AsyncClient,
    *,
    to: str,
    sender: str,
    text: str,
    headers: Sequence[tuple[str, str]] = (),
) -> httpx.Response:
    payload = {
        "from": sender,
        "to": to,
        "text": text,
        "headers": {"Message-ID": _message_id(), **dict(headers)},
    }
    body = json.dumps(payload).encode()
    return await client.post("/email/inbound/generic", content=body, headers=sign_generic(body))


async def post_reply(
    provider: str, client: httpx.AsyncClient, *, to: str, sender: str, text: str, **extra: Any
) -> httpx.Response:
    posts: dict[str, Callable[..., Awaitable[httpx.Response]]] = {
        "mailgun": post_mailgun,
        "sendgrid": post_sendgrid,
        "postmark": post_postmark,
        "generic": post_generic,
    }
    return await posts[provider](client, to=to, sender=sender, text=text, **extra)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return cast(str, cast(EmailMessage, part).get_content())


def needs_integration(module: str) -> None:
    """Skip the calling test module when ``module`` (an agent framework of the ``integrations``
    extra) is not installed, as ``make test`` alone leaves it; under ``CI=true``, fail instead."""
    if importlib.util.find_spec(module.partition(".")[0]) is not None:
        return
    reason = f"needs {module!r}: pip install -e '.[integrations]'"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must install the integrations extra)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
