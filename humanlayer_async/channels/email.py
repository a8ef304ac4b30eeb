"""EmailChannel: approval requests by SMTP, decisions from replies posted by an inbound-mail webhook."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import getaddresses
from typing import TypedDict

import aiosmtplib
import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import _threads
from .._audit import logger
from .._exceptions import ChannelError, ConfigurationError, NotAnApprover, StoreError, UnknownRequest
from .._models import ApprovalRequest, Decision
from .._refused import Refused
from .._render import describe_decision, describe_votes, summarize
from .._retry import Backoff
from ._inbound_mail import PROVIDERS, InboundMail, Provider, ReplayGuard, read_mail
from ._mail_compose import (
    compose,
    follow_up_text,
    full_call_attachment,
    help_text,
    reminder_text,
    request_bodies,
    subject,
)
from ._mail_reply import parse_answer
from ._reply_token import TOKEN_LENGTH, ReplyTokens
from .base import BaseChannel, Decider, check_label

__all__ = ["EmailChannel"]

_LOCAL_PART_MAX = 64
_MESSAGE_ID = re.compile(r"<hl\.([0-9a-f]{32})\.(\d+)@[^>]+>")


class _Who(TypedDict):
    """Whom a refused reply is about, for its log line."""

    request_id: str
    sender: str


def _addresses(value: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    """The addresses in ``value`` (``"a@x.com"``, ``"Alice <a@x.com>"`` or a list of those)."""
    items = [value] if isinstance(value, str) else list(value or ())
    found = tuple(address for _, address in getaddresses(items) if "@" in address)
    if not found or len(found) != len(items):
        raise ConfigurationError(f"{what} must be one email address or a list of them, not {value!r}")
    return found


def _port(port: int | None, use_tls: bool) -> int:
    if port is not None:
        return port
    raw = os.environ.get("SMTP_PORT")
    if raw is None or not raw.strip():
        return 465 if use_tls else 587
    if not raw.strip().isdigit():
        raise ConfigurationError(f"SMTP_PORT must be a port number, not {raw!r}")
    return int(raw)


class EmailChannel(BaseChannel):
    """Email: each request is mailed to ``to``; approvers answer by replying.

    Each recipient gets their own message, with the full call attached as text, whose
    ``Reply-To`` is ``reply_to`` plus-addressed with a signed token
    (``approvals+<token>@replies.company.com``) naming the request and the recipient.
    Replies reach the listener at ``POST /email/inbound/<inbound>`` from your inbound-mail
    provider; the first line of a reply from an approver whose SPF, DKIM or DMARC pass is
    aligned with its From domain decides: ``approve`` or ``deny: <reason>``. For questions
    (``human_as_tool``), the reply's text is the answer. Once a request is decided, timed
    out or cancelled, every recipient gets a follow-up in the same thread.

    Args:
        to: One address or a list; each gets the request.
        label: What a ``Policy`` names this channel by (its ``channels = [...]``). Default:
            ``"email"``, its kind.
        sender: The ``From`` address. Default: ``smtp_username`` when it is an address.
        smtp_host: Default: ``SMTP_HOST``.
        smtp_port: Default: ``SMTP_PORT``, else 465 with ``use_tls`` and 587 without.
        smtp_username: Default: ``SMTP_USERNAME``; no login when unset.
        smtp_password: Default: ``SMTP_PASSWORD``.
        start_tls: ``True`` requires STARTTLS, ``False`` never uses it, ``None`` upgrades
            when the server offers it.
        use_tls: Connect with TLS from the start (port 465).
        reply_to: The address replies go to, before the ``+<token>``; its local part may
            have at most 19 characters. Default: ``sender``.
        inbound: The inbound-mail provider: ``"mailgun"``, ``"sendgrid"``, ``"postmark"``
            or ``"generic"`` (signed JSON, for any other provider or an IMAP bridge).
        inbound_secret: Mailgun's webhook signing key, the basic-auth password in the
            SendGrid or Postmark webhook URL, or the generic HMAC secret. Without it the
            channel only sends, and every inbound webhook is refused.
        token_secret: The key of the reply tokens. Default: ``HUMANLAYER_SECRET``; when
            unset, a random key of this process (replies after a restart, or to another
            process of a fleet, then cannot be verified).
        approvers: Who may decide by replying. Default: the ``to`` addresses. The reply
            must also come from the recipient its token was made for.

    Attributes:
        smtp_timeout: Seconds each SMTP step (connect, each command) may take: 30.
        retry_delays: Seconds to wait before each retry of a failed delivery: 1, 4, 15.
    """

    name = "email"

    def __init__(
        self,
        to: str | Sequence[str],
        *,
        label: str | None = None,
        sender: str | None = None,
        smtp_host: str | None = None,
        smtp_port: int | None = None,
        smtp_username: str | None = None,
        smtp_password: str | None = None,
        start_tls: bool | None = None,
        use_tls: bool = False,
        reply_to: str | None = None,
        inbound: Provider = "generic",
        inbound_secret: str | None = None,
        token_secret: str | bytes | None = None,
        approvers: str | Sequence[str] | None = None,
    ) -> None:
        self.label = check_label(label, self.name)
        self.to = _addresses(to, "to")
        if len(self.to) > 256:
            raise ConfigurationError("EmailChannel sends to at most 256 addresses; use a list address")
        host = smtp_host or os.environ.get("SMTP_HOST")
        if not host:
            raise ConfigurationError("EmailChannel needs an SMTP server: pass smtp_host= or set SMTP_HOST")
        self.smtp_host = host
        if use_tls and start_tls:
            raise ConfigurationError(
                "use_tls=True (TLS from the start) and start_tls=True exclude each other"
            )
        self.use_tls = use_tls
        self.start_tls = start_tls
        self.smtp_port = _port(smtp_port, use_tls)
        self.smtp_username = smtp_username or os.environ.get("SMTP_USERNAME") or None
        self._smtp_password = smtp_password or os.environ.get("SMTP_PASSWORD") or None
        if self._smtp_password and not self.smtp_username:
            raise ConfigurationError(
                "an SMTP password needs a username: pass smtp_username= or set SMTP_USERNAME"
            )
        if sender is None and not (self.smtp_username and "@" in self.smtp_username):
            raise ConfigurationError("EmailChannel needs a From address: pass sender=")
        self.sender = sender or str(self.smtp_username)
        self._domain = _addresses(self.sender, "sender")[0].rpartition("@")[2]
        self.reply_to = _addresses(reply_to or self.sender, "reply_to")[0]
        if len(self.reply_to.rpartition("@")[0]) + 1 + TOKEN_LENGTH > _LOCAL_PART_MAX:
            raise ConfigurationError(
                f"reply_to's local part must have at most {_LOCAL_PART_MAX - 1 - TOKEN_LENGTH} characters "
                f"so that <local>+<token> fits in {_LOCAL_PART_MAX}: {self.reply_to!r} is too long"
            )
        if inbound not in PROVIDERS:
            raise ConfigurationError(f"inbound must be one of {', '.join(PROVIDERS)}, not {inbound!r}")
        self.inbound: Provider = inbound
        self._inbound_secret = inbound_secret
        key = token_secret or os.environ.get("HUMANLAYER_SECRET")
        if not key:
            logger.warning(
                "email.ephemeral_token_key",
                detail="HUMANLAYER_SECRET is not set: reply tokens are signed with a random key of this "
                "process, so replies after a restart or to another process cannot be verified",
            )
            key = secrets.token_bytes(32)
        self._tokens = ReplyTokens(key.encode() if isinstance(key, str) else key)
        self.approvers = tuple(
            address.lower()
            for address in (self.to if approvers is None else _addresses(approvers, "approvers"))
        )
        self.smtp_timeout = 30.0
        self.retry_delays: tuple[float, ...] = (1.0, 4.0, 15.0)
        self._replays = ReplayGuard()
        self._helped: set[str] = set()
        self._decider: Decider | None = None
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        return (
            f"EmailChannel(to={list(self.to)!r}, sender={self.sender!r}, smtp_host={self.smtp_host!r}, "
            f"smtp_port={self.smtp_port}, inbound={self.inbound!r})"
        )

    # -- lifecycle and routes ----------------------------------------------------------

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self._decider = decider
        if self._inbound_secret is None:
            logger.warning(
                "email.inbound_disabled",
                detail="EmailChannel has no inbound_secret: replies are refused; it only sends",
            )
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._task_group = None

    def routes(self) -> Sequence[BaseRoute]:
        return [Route(f"/email/inbound/{self.inbound}", self._inbound, methods=["POST"])]

    # -- sending -----------------------------------------------------------------------

    def _message_id(self, request_id: str, index: int, suffix: str = "") -> str:
        return f"<hl.{request_id}.{index}{suffix}@{self._domain}>"

    def _reply_address(self, request_id: str, index: int) -> str:
        local, _, domain = self.reply_to.rpartition("@")
        return f"{local}+{self._tokens.make(request_id, index, self.to[index])}@{domain}"

    async def send(self, request: ApprovalRequest) -> str | None:
        """Mail the request to every recipient; the reference is the sent ``Message-ID`` s."""
        try:
            reply_to = [self._reply_address(request.id, index) for index in range(len(self.to))]
        except ValueError as exc:
            raise ChannelError(f"email: cannot make a reply address for request {request.id!r}") from exc
        text, html_body = request_bodies(request)
        attachment = full_call_attachment(request)
        messages = [
            compose(
                sender=self.sender,
                to=address,
                subject=subject(request),
                text=text,
                html_body=html_body,
                attachment=attachment,
                message_id=self._message_id(request.id, index),
                reply_to=reply_to[index],
            )
            for index, address in enumerate(self.to)
        ]
        delivered = await self._deliver(messages)
        return " ".join(str(message["Message-ID"]) for message in delivered)

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        """Reply in each recipient's thread with who decided, how and when."""
        self._helped.discard(request.id)
        if request.decision is not None and ref:
            text = follow_up_text(request, request.decision)
            await self._in_thread(request, ref, text, f".{request.decision.status.value}", answerable=False)

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        """Reply in each recipient's thread that the request still waits; a reply to it answers."""
        if request.decision is None and ref:
            stamp = f".remind.{int(time.time())}"
            await self._in_thread(request, ref, reminder_text(request), stamp, answerable=True)

    async def _in_thread(
        self, request: ApprovalRequest, ref: str, text: str, suffix: str, *, answerable: bool
    ) -> None:
        """Mail ``text`` to each recipient in the thread of the request mailed to them (``ref``);
        ``answerable``: with the request's reply address, so that replying to it decides."""
        messages = []
        for match in _MESSAGE_ID.finditer(ref):
            index = int(match.group(2))
            if match.group(1) != request.id or index >= len(self.to):
                continue
            messages.append(
                compose(
                    sender=self.sender,
                    to=self.to[index],
                    subject=f"Re: {subject(request)}",
                    text=text,
                    message_id=self._message_id(request.id, index, suffix),
                    reply_to=self._reply_address(request.id, index) if answerable else None,
                    in_reply_to=match.group(0),
                    references=[match.group(0)],
                )
            )
        if messages:
            await self._deliver(messages)

    async def _deliver(self, messages: Sequence[EmailMessage]) -> list[EmailMessage]:
        """Send ``messages``, retrying what failed for a passing reason; those delivered.

        Raises ``ChannelError`` when none could be delivered.
        """
        remaining = list(messages)
        delivered: list[EmailMessage] = []
        refused: list[EmailMessage] = []
        backoff = Backoff.schedule(self.retry_delays)
        while True:
            error = await self._attempt(remaining, delivered, refused)
            if not remaining or isinstance(error, aiosmtplib.SMTPAuthenticationError):
                break
            delay = backoff.next()
            if delay is None:
                break
            logger.warning(
                "email.smtp_retry",
                attempt=backoff.retries_made,
                error=str(error),
                undelivered=len(remaining),
                retry_in=delay,
            )
            await anyio.sleep(delay)
        undelivered = [str(message["To"]) for message in [*refused, *remaining]]
        if not delivered:
            raise ChannelError(f"email: could not deliver to {', '.join(undelivered)}: {error}") from error
        if undelivered:
            logger.warning("email.undelivered", to=undelivered, error=str(error))
        return delivered

    async def _attempt(
        self, remaining: list[EmailMessage], delivered: list[EmailMessage], refused: list[EmailMessage]
    ) -> Exception | None:
        """One SMTP session sending ``remaining`` in order; moves each message on as it goes.

        A message the server refuses for good (5xx) moves to ``refused``; the error that
        ended the session early (to be retried) is returned.
        """
        smtp = aiosmtplib.SMTP(
            hostname=self.smtp_host,
            port=self.smtp_port,
            username=self.smtp_username,
            password=self._smtp_password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.smtp_timeout,
        )
        last: Exception | None = None
        try:
            # Both names are looked up on the library's own threads, not in the default
            # executor as aiosmtplib would: sync tools waiting for a decision may hold all of
            # its threads. TLS still names (SNI) and verifies smtp_host.
            local_hostname = await _threads.getfqdn()
            with anyio.fail_after(self.smtp_timeout):
                sock = await _threads.connect_tcp(self.smtp_host, self.smtp_port)
            await smtp.connect(sock=sock, port=None, local_hostname=local_hostname)
            while remaining:
                try:
                    await smtp.send_message(remaining[0])
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    if any(recipient.code < 500 for recipient in exc.recipients):
                        raise
                    refused.append(remaining.pop(0))
                    last = exc
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code < 500 or isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                        raise
                    refused.append(remaining.pop(0))
                    last = exc
                else:
                    delivered.append(remaining.pop(0))
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return exc
        finally:
            smtp.close()
        return last

    # -- replies -----------------------------------------------------------------------

    async def _inbound(self, request: Request) -> Response:
        """``POST /email/inbound/<provider>``: verify, read the reply, decide.

        Anything that decides nothing raises ``Refused``: the listener answers it, in plain
        text, and logs it.
        """
        if self._inbound_secret is None:
            raise Refused(403, "inbound mail is not configured (no inbound_secret)")
        mail = await read_mail(self.inbound, request, self._inbound_secret, self._replays)
        with self._replays.once(mail.nonce):
            status = await self._take(mail)
        return JSONResponse({"status": status})

    def _match(self, mail: InboundMail) -> tuple[str, int]:
        """The request and recipient a reply's token names, if it verifies."""
        candidates = [address.rpartition("@")[0].rpartition("+")[2] for address in mail.recipients]
        if mail.mailbox_hash:
            candidates.append(mail.mailbox_hash)
        for candidate in candidates:
            found = self._tokens.read(candidate, self.to)
            if found is not None:
                return found
        raise Refused(403, "no valid reply token in the recipient address", sender=mail.sender)

    async def _take(self, mail: InboundMail) -> str:
        """Turn a verified reply into a decision; the status that stands, or ``Refused``."""
        if mail.automatic:
            raise Refused(422, "automatic replies decide nothing", sender=mail.sender)
        request_id, index = self._match(mail)
        who = _Who(request_id=request_id, sender=mail.sender)
        if mail.sender != self.to[index].lower():
            raise Refused(403, "the sender is not the recipient this reply address was made for", **who)
        if mail.sender_check:
            raise Refused(403, mail.sender_check, **who)
        if mail.sender not in self.approvers:
            raise Refused(403, "the sender is not an approver", **who)
        if self._decider is None:
            raise Refused(503, "the channel has not started", **who)
        try:
            decision = await self._apply(self._decider, request_id, index, mail, who)
        except StoreError as exc:  # a retry may find the store back: the webhook is not used up
            raise Refused(503, "the store is unavailable: retry later", error=str(exc), **who) from exc
        return "voted" if decision is None else decision.status.value

    async def _apply(
        self, decider: Decider, request_id: str, index: int, mail: InboundMail, who: _Who
    ) -> Decision | None:
        """Decide ``request_id`` as the reply from ``to[index]`` says; the decision (``None``: a
        vote counted, the request waits for more), or ``Refused``.

        ``who`` (the request id and sender) goes into the log line of a refusal.
        """
        try:
            request = await decider.get(request_id)
        except UnknownRequest:
            raise Refused(404, "no such request", **who) from None
        if request.decision is not None:
            raise Refused(409, f"already {describe_decision(request.decision)}", **who)
        by = self.to[index]
        try:
            if request.kind == "question":
                if not mail.text:
                    self._offer_help(request, index, mail)
                    raise Refused(422, "the reply has no answer above the quoted message", **who)
                answered = await decider.respond(request_id, mail.text, by=by, via=self.name)
            else:
                answer = parse_answer(mail.text)
                if answer is None:
                    self._offer_help(request, index, mail)
                    raise Refused(422, "not a clear answer: reply 'approve' or 'deny: <reason>'", **who)
                approved, reason = answer
                if request.votes and request.votes[0].edits:  # the mail shows the call before the edit
                    text = (
                        "This call was edited after this mail was sent, so your answer was not counted.\n"
                        f"It now reads: {summarize(request)}\n"
                        "Decide it where the edited call is shown: the web console, Slack, or\n"
                        f"humanlayer-async show {request.id}\n"
                    )
                    self._reply(request, index, mail, text, f".edited.{time.time_ns()}")
                    raise Refused(409, "the call was edited after this mail was sent", **who)
                answered = await decider.decide(request_id, approved, by=by, comment=reason, via=self.name)
        except NotAnApprover:
            raise Refused(403, "the sender is not an approver of this request", **who) from None
        if answered.decision is None:  # a vote: the request waits for more, and the voter is told
            progress = describe_votes(answered.votes, answered.needed)
            logger.info("email.voted", request_id=request_id, progress=progress)
            self._reply(
                request, index, mail, f"Your approval is counted: {progress}.\n", f".voted.{time.time_ns()}"
            )
            return None
        if not answered.stands:  # someone decided first (or it expired): say who
            raise Refused(409, f"already {describe_decision(answered.decision)}", **who)
        return answered.decision

    def _offer_help(self, request: ApprovalRequest, index: int, mail: InboundMail) -> None:
        """Explain the accepted answers to an approver, once per request, in the background."""
        if request.id in self._helped:
            return
        self._helped.add(request.id)
        self._reply(request, index, mail, help_text(request), ".help")

    def _reply(self, request: ApprovalRequest, index: int, mail: InboundMail, text: str, suffix: str) -> None:
        """Answer the reply ``mail`` from ``to[index]`` in its thread, in the background
        (answerable, as the request is)."""
        if self._task_group is None:
            return
        original = self._message_id(request.id, index)
        message = compose(
            sender=self.sender,
            to=self.to[index],
            subject=f"Re: {subject(request)}",
            text=text,
            message_id=self._message_id(request.id, index, suffix),
            reply_to=self._reply_address(request.id, index),
            in_reply_to=mail.message_id or original,
            references=[original, *([mail.message_id] if mail.message_id else [])],
            auto_submitted="auto-replied",
        )
        self._task_group.start_soon(self._send_reply, request.id, message)

    async def _send_reply(self, request_id: str, message: EmailMessage) -> None:
        try:
            await self._deliver([message])
        except ChannelError as exc:
            logger.warning("email.reply_failed", request_id=request_id, error=str(exc))
