"""Inbound-mail webhooks: verify each provider's signature or auth, then read the reply.

Every provider's payload becomes one ``InboundMail``; anything wrong becomes ``Refused``
(a 4xx status and a reason safe to log and to return, answered by the listener), never an
unhandled exception.

- ``mailgun``: form fields, ``HMAC-SHA256(secret, timestamp + token) == signature``;
  stale timestamps and reused tokens are refused.
- ``sendgrid``: Inbound Parse multipart, HTTP basic auth with ``secret`` as the password.
- ``postmark``: inbound JSON, HTTP basic auth likewise.
- ``generic``: ``{"from", "to", "text", "headers"}`` JSON with ``X-Timestamp`` and
  ``X-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``.

Each reads the sender checks the provider itself reports (see ``_mail_auth``): Mailgun's
``X-Mailgun-Spf`` (for the envelope ``sender``) and ``X-Mailgun-Dkim-Check-Result`` (which
names no domain), SendGrid's ``SPF`` (for the ``envelope``'s ``from``) and ``dkim``, the
``Received-SPF`` Postmark adds, and for ``generic`` the topmost ``Authentication-Results``
and ``Received-SPF``. Other verdicts in a message's headers may only refuse it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any, Literal

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from .._refused import Refused
from ._mail_auth import Verdict, authentication_results, domain_of, received_spf, sender_check
from ._mail_reply import strip_quotes

__all__ = ["PROVIDERS", "InboundMail", "Provider", "ReplayGuard", "read_mail"]

Provider = Literal["mailgun", "sendgrid", "postmark", "generic"]
PROVIDERS: tuple[Provider, ...] = ("mailgun", "sendgrid", "postmark", "generic")

_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")

MAX_AGE = 300.0
"""Seconds a signed webhook stays valid (either way, for clock skew)."""


@dataclass(frozen=True, slots=True)
class InboundMail:
    """One reply, as every provider's payload is read.

    ``sender`` is the ``From`` address and ``recipients`` the addresses it was sent to,
    lowercase. ``text`` is the reply's own text, quoted parts stripped. ``sender_check``
    says why the SPF/DKIM/DMARC verdicts do not vouch for the ``From`` domain, if they do
    not. ``nonce`` identifies a signed webhook, to refuse a replay of it (see ``ReplayGuard``).
    """

    sender: str
    recipients: tuple[str, ...]
    text: str
    headers: tuple[tuple[str, str], ...]
    sender_check: str | None = None
    mailbox_hash: str | None = None
    nonce: str | None = None

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), if present."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def automatic(self) -> bool:
        """Whether an auto-responder or a bounce sent it (RFC 3834 ``Auto-Submitted`` and kin)."""
        submitted = (self.header("Auto-Submitted") or "no").strip().lower()
        precedence = (self.header("Precedence") or "").strip().lower()
        return (
            not submitted.startswith("no")
            or precedence in {"bulk", "junk", "auto_reply"}
            or self.header("X-Autoreply") is not None
            or self.header("X-Autorespond") is not None
        )

    @property
    def message_id(self) -> str | None:
        """The reply's ``Message-ID``, when it is a well-formed ``<id@host>`` (safe to thread on)."""
        match = _MESSAGE_ID.fullmatch((self.header("Message-ID") or "").strip())
        return match.group(0) if match else None


class ReplayGuard:
    """Remembers the nonces of signed webhooks for as long as their timestamps are fresh.

    A webhook counts as used once it has been handled (``once``), not when it arrives: a
    provider's retry of a post that failed for a passing reason (a 5xx) is handled again.
    """

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._seen: dict[str, float] = {}
        self._in_flight: set[str] = set()

    def check_fresh(self, timestamp: str | None) -> None:
        """Refuse a missing, malformed, stale or future timestamp (Unix seconds)."""
        try:
            age = time.time() - float(timestamp or "")
        except ValueError:
            raise Refused(401, "missing or malformed timestamp") from None
        if not abs(age) <= self.max_age:
            raise Refused(401, "stale timestamp")

    @contextlib.contextmanager
    def once(self, nonce: str | None) -> Iterator[None]:
        """Handle the webhook ``nonce`` names at most once (nothing to guard when ``None``).

        Refuses a nonce already used within the freshness window (both ways) or being
        handled right now. The nonce is remembered when the block ends or refuses with a
        4xx; after an error or a 5xx refusal it is forgotten, so a retry is handled.
        """
        if nonce is None:
            yield
            return
        self._expire()
        if nonce in self._seen:
            raise Refused(401, "replayed webhook")
        if nonce in self._in_flight:
            raise Refused(409, "the same webhook is being handled")
        self._in_flight.add(nonce)
        try:
            yield
        except Refused as refused:
            if refused.status < 500:
                self._seen[nonce] = time.monotonic() + 2 * self.max_age
            raise
        else:
            self._seen[nonce] = time.monotonic() + 2 * self.max_age
        finally:
            self._in_flight.discard(nonce)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[oldest]


async def read_mail(provider: Provider, request: Request, secret: str, guard: ReplayGuard) -> InboundMail:
    """Verify ``request`` as ``provider`` signs or authenticates it, and read the reply in it."""
    if provider == "mailgun":
        return await _mailgun(request, secret, guard)
    if provider == "sendgrid":
        return await _sendgrid(request, secret)
    if provider == "postmark":
        return await _postmark(request, secret)
    return await _generic(request, secret, guard)


# -- providers ---------------------------------------------------------------------------


async def _mailgun(request: Request, secret: str, guard: ReplayGuard) -> InboundMail:
    form = await _form(request)
    timestamp, token, signature = _field(form, "timestamp"), _field(form, "token"), _field(form, "signature")
    if not (timestamp and token and signature):
        raise Refused(401, "missing Mailgun signature")
    expected = hmac.new(secret.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise Refused(401, "bad Mailgun signature")
    guard.check_fresh(timestamp)
    headers = _header_pairs(_json(_field(form, "message-headers") or "[]"))
    from_address = _address(_field(form, "from") or _field(form, "sender"))
    reported = _verdicts(
        ("spf", _lookup(headers, "X-Mailgun-Spf"), domain_of(_field(form, "sender"))),
        ("dkim", _lookup(headers, "X-Mailgun-Dkim-Check-Result"), None),
    )
    return InboundMail(
        sender=from_address,
        recipients=_addresses(_field(form, "recipient")),
        text=strip_quotes(_field(form, "stripped-text") or _field(form, "body-plain") or ""),
        headers=headers,
        sender_check=sender_check(from_address, reported, _header_verdicts(headers), required=True),
        nonce=f"mailgun:{token}",
    )


async def _sendgrid(request: Request, secret: str) -> InboundMail:
    _check_basic_auth(request, secret)
    form = await _form(request)
    headers = tuple(
        (name, str(value)) for name, value in HeaderParser().parsestr(_field(form, "headers") or "").items()
    )
    envelope = _json(_field(form, "envelope") or "{}")
    if not isinstance(envelope, dict):
        envelope = {}
    recipients = _addresses(_field(form, "to"))
    if isinstance(envelope.get("to"), list):
        recipients += _addresses(", ".join(str(address) for address in envelope["to"]))
    envelope_from = envelope.get("from")
    from_address = _address(_field(form, "from"))
    reported = [
        *_verdicts(("spf", _field(form, "SPF"), domain_of(str(envelope_from or "")))),
        *(  # "{@company.com : pass}", or "{@a.com : fail, @company.com : pass}"
            Verdict("dkim", result.lower(), domain_of(domain))
            for domain, result in re.findall(r"@([^\s:,{}]+)\s*:\s*([A-Za-z]+)", _field(form, "dkim") or "")
        ),
    ]
    return InboundMail(
        sender=from_address,
        recipients=recipients,
        text=strip_quotes(_field(form, "text") or ""),
        headers=headers,
        sender_check=sender_check(from_address, reported, _header_verdicts(headers), required=True),
    )


async def _postmark(request: Request, secret: str) -> InboundMail:
    _check_basic_auth(request, secret)
    payload = _json(await request.body())
    if not isinstance(payload, dict):
        raise Refused(400, "the Postmark payload is not a JSON object")
    from_full = payload.get("FromFull")
    sender = from_full.get("Email") if isinstance(from_full, dict) else payload.get("From")
    listed = [
        entry.get("Email")
        for key in ("ToFull", "CcFull")
        if isinstance(payload.get(key), list)
        for entry in payload[key]
        if isinstance(entry, dict)
    ]
    recipients = [*listed, payload.get("OriginalRecipient")]
    headers = _header_pairs(
        [
            [entry.get("Name"), entry.get("Value")]
            for entry in _list(payload.get("Headers"), "Headers")
            if isinstance(entry, dict)
        ]
    )
    mailbox_hash = payload.get("MailboxHash")
    from_address = _address(_str_or_none(sender, "FromFull.Email"))
    spf = received_spf(_lookup(headers, "Received-SPF"))
    return InboundMail(
        sender=from_address,
        recipients=_addresses(", ".join(r for r in recipients if isinstance(r, str))),
        text=strip_quotes(
            _str_or_none(payload.get("StrippedTextReply"), "StrippedTextReply")
            or _str_or_none(payload.get("TextBody"), "TextBody")
            or ""
        ),
        headers=headers,
        sender_check=sender_check(
            from_address, [spf] if spf else [], _results_header(headers), required=True
        ),
        mailbox_hash=mailbox_hash.lower() if isinstance(mailbox_hash, str) and mailbox_hash else None,
    )


async def _generic(request: Request, secret: str, guard: ReplayGuard) -> InboundMail:
    timestamp, signature = request.headers.get("x-timestamp"), request.headers.get("x-signature")
    if not (timestamp and signature and signature.startswith("sha256=")):
        raise Refused(401, "missing X-Timestamp or X-Signature: sha256=<hex>")
    body = await request.body()
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.removeprefix("sha256=").strip().lower().encode()):
        raise Refused(401, "bad X-Signature")
    guard.check_fresh(timestamp)
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Refused(400, "the payload is not a JSON object")
    raw_headers = payload.get("headers", {})
    if not isinstance(raw_headers, dict):
        raise Refused(400, '"headers" must be an object of header name to value')
    headers = _header_pairs([[name, value] for name, value in raw_headers.items()])
    to = payload.get("to")
    if isinstance(to, list) and all(isinstance(address, str) for address in to):
        to = ", ".join(to)
    from_address = _address(_str_or_none(payload.get("from"), "from"))
    return InboundMail(
        sender=from_address,
        recipients=_addresses(_str_or_none(to, "to")),
        text=strip_quotes(_str_or_none(payload.get("text"), "text") or ""),
        headers=headers,
        sender_check=sender_check(from_address, _header_verdicts(headers), required=False),
        nonce=f"generic:{expected}",
    )


# -- SPF / DKIM / DMARC --------------------------------------------------------------------


def _verdicts(*found: tuple[str, str | None, str | None]) -> list[Verdict]:
    """``Verdict`` s from ``(method, reported value, domain)``; the result is the value's first word."""
    return [
        Verdict(method, words[0].strip(";:()").lower(), domain)
        for method, value, domain in found
        if (words := (value or "").split())
    ]


def _results_header(headers: tuple[tuple[str, str], ...]) -> list[Verdict]:
    """The verdicts of the topmost ``Authentication-Results``: the latest receiving server's."""
    results = _lookup(headers, "Authentication-Results")
    return authentication_results(results) if results else []


def _header_verdicts(headers: tuple[tuple[str, str], ...]) -> list[Verdict]:
    """The verdicts of the topmost ``Authentication-Results`` and ``Received-SPF`` headers."""
    spf = received_spf(_lookup(headers, "Received-SPF"))
    return [*_results_header(headers), *([spf] if spf else [])]


# -- helpers -----------------------------------------------------------------------------


async def _form(request: Request) -> FormData:
    try:
        return await request.form()
    except (HTTPException, MultiPartException, ValueError) as exc:
        raise Refused(400, "malformed form body") from exc


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _json(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise Refused(400, "malformed JSON") from None


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refused(400, f"{what} must be a list")
    return value


def _str_or_none(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise Refused(400, f"{what} must be a string")


def _header_pairs(raw: object) -> tuple[tuple[str, str], ...]:
    pairs = _list(raw, "the headers")
    if not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(item, str) for item in pair)
        for pair in pairs
    ):
        raise Refused(400, "the headers must be [name, value] string pairs")
    return tuple((name, value) for name, value in pairs)


def _lookup(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


def _address(value: str | None) -> str:
    address = parseaddr(value or "")[1].strip().lower()
    if "@" not in address:
        raise Refused(400, "no sender address")
    return address


def _addresses(value: str | None) -> tuple[str, ...]:
    pairs = getaddresses([value]) if value else []
    return tuple(address.strip().lower() for _, address in pairs if "@" in address)


def _check_basic_auth(request: Request, secret: str) -> None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    password = decoded.partition(b":")[2]
    if scheme.lower() != "basic" or not hmac.compare_digest(password, secret.encode()):
        raise Refused(401, "missing or wrong HTTP basic auth")
