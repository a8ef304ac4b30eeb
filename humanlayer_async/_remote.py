"""The operator commands over the HTTP API: ``humanlayer-async pending --url https://...``.

``RemoteDecisions`` offers the methods of the engine's ``Decisions`` that the commands call
(decide, respond, cancel, get, pending, count_pending, grants, confirm_grant, revoke_grant,
history), a page of pending requests with their count, and the stats the server counts, through
``ApiChannel``'s routes under ``/api/v1``. It turns the JSON back into the SDK's records and the
API's error codes back into the SDK's exceptions, so each command prints and exits as it does
against a store. Who decides is the user the token names:
the ``by`` the commands pass is not sent.

The token comes from ``$HUMANLAYER_TOKEN`` or a file only its owner can read (``--token-file``),
never from the command line, which ``ps`` shows to every user of the machine; and it travels
over HTTPS only, or plain HTTP to this machine (a loopback host).

Every failure is one line: ``ConfigurationError`` (exit status 2) for a URL that is not HTTPS, a
TLS failure, a token the server does not accept (401) or an answer that is not the API's;
``StoreError`` (exit status 1, as for a database out of reach) for a server not reached, not
answering in time, or unavailable (503).
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack, cast
from urllib.parse import quote

import httpx

from ._audit import AuditEntry, AuditEvent
from ._codec import digest
from ._exceptions import (
    ArgumentsEdited,
    ConfigurationError,
    HumanLayerError,
    InvalidEdit,
    NotAnApprover,
    StoreError,
    UnknownGrant,
    UnknownRequest,
)
from ._hosts import is_loopback
from ._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote
from ._pages import MAX_PAGE, Filters, Page
from ._stats import ApproverCount, ToolStats
from .channels.base import Answered
from .stores.base import age_seconds

__all__ = ["TOKEN_ENV", "RemoteDecisions", "add_url_options", "connect"]

T = TypeVar("T")

TOKEN_ENV = "HUMANLAYER_TOKEN"
"""The environment variable holding the API token, when ``--token-file`` does not name a file."""

TIMEOUT = 30.0
"""Seconds to wait for the server: to connect, and for each answer."""


class _NoToken(argparse.Action):
    """``--token``: refused without showing its value, since ``ps`` shows a command line to
    every user of the machine."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"--token: a token on the command line is shown by ps to every user of this machine; set"
            f" ${TOKEN_ENV}, or put it in a file only you can read and pass --token-file PATH"
        )


def add_url_options(options: argparse.ArgumentParser, *, nested: bool) -> None:
    """``--url`` and ``--token-file`` (and ``--token``, refused) on a store command's options."""
    default = argparse.SUPPRESS if nested else None
    options.add_argument(
        "--url",
        default=default,
        help="decide through the HTTP API of a listener serving ApiChannel (https://, or http:// to"
        " this machine), as the token's user, instead of --store",
    )
    options.add_argument(
        "--token-file",
        default=default,
        metavar="PATH",
        help=f"with --url: a file, readable by you alone, holding your API token (default: ${TOKEN_ENV})",
    )
    options.add_argument(
        "--token", nargs="?", action=_NoToken, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def connect(url: str, token_file: str | None) -> RemoteDecisions:
    """The API at ``url``, with the token of ``token_file`` or ``$HUMANLAYER_TOKEN``."""
    _api_url(url)  # a URL refused before any token is read
    source = f"${TOKEN_ENV}" if token_file is None else token_file
    return RemoteDecisions(url, _read_token(token_file), source)


def _read_token(token_file: str | None) -> str:
    if token_file is None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ConfigurationError(
                f"--url needs your API token: set ${TOKEN_ENV}, or pass --token-file PATH"
            )
    else:
        try:
            with open(token_file, encoding="utf-8") as file:
                mode = os.fstat(file.fileno()).st_mode
                token = file.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token file {token_file}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"the token file {token_file} is not text") from None
        if os.name == "posix" and mode & 0o077:
            raise ConfigurationError(
                f"the token file {token_file} is open to other users (mode {mode & 0o777:o}):"
                f" chmod 600 {token_file}"
            )
        if not token:
            raise ConfigurationError(f"the token file {token_file} is empty")
    if not all("!" <= character <= "~" for character in token):  # what a header can carry
        raise ConfigurationError("the API token has spaces or characters other than printable ASCII")
    return token


def _api_url(url: str) -> httpx.URL:
    """Where the API's routes are under ``url``: HTTPS, or HTTP to a loopback host only."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("https", "http") or not parsed.host:
        raise ConfigurationError(f"--url takes https://HOST[:PORT][/PATH], not {url!r}")
    if parsed.userinfo or parsed.query or parsed.fragment:
        raise ConfigurationError(
            "--url takes https://HOST[:PORT][/PATH], without credentials, query or fragment"
            f" (the token comes from ${TOKEN_ENV} or --token-file)"
        )
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise ConfigurationError(
            f"--url {url}: plain HTTP would carry your token across the network unencrypted; use"
            " https://, or http:// to this machine only (127.0.0.1, ::1, localhost)"
        )
    return parsed.copy_with(path=f"{parsed.path.rstrip('/')}/api/v1/")


class RemoteDecisions:
    """The deciding side of ``Decisions``, through the HTTP API at ``url`` as the token's user.

    The methods take what ``Decisions``' take; ``by`` and ``via`` are not sent (the token says
    who decides, the API says through what). ``stats`` is the API's own count. ``token_source``
    says where the token came from, for messages. ``aclose()`` closes the connections.
    """

    def __init__(self, url: str, token: str, token_source: str) -> None:
        self.url = url
        self.token_source = token_source
        self._client = httpx.AsyncClient(
            base_url=_api_url(url),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=TIMEOUT,
            follow_redirects=False,  # a redirect elsewhere is not where the token was meant to go
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def decide(
        self,
        request_id: str,
        approved: bool,
        *,
        by: str | Principal | None,
        comment: str | None = None,
        via: str,
        edits: Mapping[str, Any] | None = None,
        grant: float | None = None,
        seen: str | None = None,
    ) -> Answered:
        """Approve or deny, as ``Decisions.decide``."""
        body = _given(approved=approved, comment=comment, edits=edits, grant=grant, seen=seen)
        return await self._answer(request_id, "decision", body)

    async def respond(self, request_id: str, text: str, *, by: str | Principal | None, via: str) -> Answered:
        """Answer a question, as ``Decisions.respond``."""
        return await self._answer(request_id, "answer", {"text": text})

    async def cancel(
        self, request_id: str, *, by: str | Principal | None, reason: str | None, via: str
    ) -> Answered:
        """Withdraw a pending request, as ``Decisions.cancel``."""
        return await self._answer(request_id, "cancel", _given(reason=reason))

    async def get(self, request_id: str) -> ApprovalRequest:
        data = await self._call("GET", f"requests/{_segment(request_id)}", request_id)
        return self._parse(_request, data, "request")

    async def page(self, *, limit: int, after: str | None = None, **filters: Unpack[Filters]) -> Page:
        """One page of pending requests, the id after which the next starts and how many there
        are in all, as the API answers them (``read_page``'s, in one call)."""
        params = _given(limit=str(limit), after=after, **_filter_params(filters))
        data = await self._call("GET", "requests", after or "", params=params)
        return self._parse(_page, data)

    async def pending(
        self, *, after: str | None = None, limit: int | None = None, **filters: Unpack[Filters]
    ) -> list[ApprovalRequest]:
        """As ``Decisions.pending``; ``limit=None`` reads every page the API gives."""
        found: list[ApprovalRequest] = []
        while limit is None or len(found) < limit:
            wanted = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(found))
            page = await self.page(limit=wanted, after=after, **filters)
            found += page.requests
            if page.next is None:
                break
            after = page.next
        return found

    async def count_pending(self, **filters: Unpack[Filters]) -> int:
        """As ``Decisions.count_pending``: the API's ``total``."""
        return (await self.page(limit=1, **filters)).total

    async def grants(self, *, active: bool = True) -> list[Grant]:
        data = await self._call("GET", "grants", "", params={"all": "false" if active else "true"})
        return self._parse(_listed(_grant), data, "grants")

    async def confirm_grant(self, grant_id: str, *, by: str | Principal | None) -> Grant:
        data = await self._call("POST", f"grants/{_segment(grant_id)}/confirm", grant_id, body={})
        return self._parse(_grant, data, "grant")

    async def revoke_grant(self, grant_id: str, *, by: str | Principal | None) -> Grant:
        """Revoke a grant, as ``Decisions.revoke_grant``. The API answers with the grant as it
        stands, revoked by whoever did first: one already revoked is refused here, naming them."""
        for grant in await self.grants(active=False):
            if grant.id == grant_id and grant.revoked_at is not None:
                raise HumanLayerError(
                    f"grant {grant.id} of tool {grant.function} was already revoked by {grant.revoked_by}"
                    f" at {grant.revoked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
                )
        data = await self._call("POST", f"grants/{_segment(grant_id)}/revoke", grant_id, body={})
        return self._parse(_grant, data, "grant")

    async def history(
        self, *, since: datetime | None = None, request_id: str | None = None
    ) -> list[AuditEntry]:
        """The audit trail from ``since`` on (of one request), oldest first, as ``Store.history``."""
        params = _given(since=None if since is None else since.isoformat(), request_id=request_id)
        data = await self._call("GET", "audit", "", params=params)
        return self._parse(_listed(_entry), data, "entries")

    async def stats(self, *, since: datetime) -> list[ToolStats]:
        """Per-tool stats of the requests made since ``since``, counted by the server as
        ``tool_stats`` counts them (the audit trail of the window stays there)."""
        data = await self._call("GET", "stats", "", params={"since": since.isoformat()})
        return self._parse(_listed(_tool_stats), data, "stats")

    async def _answer(self, request_id: str, action: str, body: dict[str, Any]) -> Answered:
        """What a decision route's answer came to; someone else's standing decision (409
        ``already_decided``) is an answer that does not stand, as ``Decisions`` gives it."""
        try:
            data = await self._call(
                "POST", f"requests/{_segment(request_id)}/{action}", request_id, body=body
            )
        except _AlreadyDecided as exc:
            return Answered(self._parse(_decision, exc.decision), stands=False)
        return self._parse(_answered, data)

    async def _call(
        self,
        method: str,
        path: str,
        subject: str,
        *,
        params: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON object a route answers; an error answer raised as the SDK's exception about
        ``subject`` (the request's or grant's id)."""
        try:
            response = await self._client.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise StoreError(f"{self.url} did not answer within {TIMEOUT:.0f} s") from None
        except httpx.TransportError as exc:
            failure = _tls_failure(exc)
            if isinstance(failure, ssl.SSLCertVerificationError):
                raise ConfigurationError(
                    f"TLS with {self.url} failed: {exc} (signed by a private CA? set SSL_CERT_FILE to its"
                    " certificate)"
                ) from None
            if failure is not None:
                raise ConfigurationError(f"TLS with {self.url} failed: {exc}") from None
            raise StoreError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or (
            not response.is_success and not isinstance(data.get("error"), dict)
        ):
            raise ConfigurationError(
                f"{self.url} answered {response.status_code} {response.reason_phrase}, not as the"
                " HumanLayer API does: is it the address of a listener serving ApiChannel?"
            )
        if response.is_success:
            return data
        raise self._error(response.status_code, data["error"], subject)

    def _error(self, status: int, error: dict[str, Any], subject: str) -> Exception:
        """The SDK's exception for an error answer, saying what the API said."""
        code, message = error.get("code"), str(error.get("message") or error.get("code"))
        exception: HumanLayerError
        if code == "unauthenticated":
            return ConfigurationError(f"{self.url} does not accept the token in {self.token_source}")
        if code in ("not_found", "method_not_allowed"):
            return ConfigurationError(
                f"{self.url} answered {status} {code}: is it the address of a listener serving ApiChannel?"
            )
        if code == "already_decided" and isinstance(error.get("decision"), dict):
            return _AlreadyDecided(message, error["decision"])
        if code == "unknown_request":
            return UnknownRequest(subject)
        if code == "unknown_grant":
            return UnknownGrant(subject)
        if code == "not_an_approver":  # by: the token's user, whom the message names
            exception = NotAnApprover(subject, "", requester=error.get("requester") is True)
        elif code == "invalid_edit":
            exception = InvalidEdit(subject, str(error.get("argument") or ""), message)
        elif code == "arguments_edited":
            exception = ArgumentsEdited(subject, "")
        elif code == "unavailable":
            exception = StoreError(message)
        else:  # not_decidable, grant_not_live, malformed, and codes newer than this client
            exception = HumanLayerError(message)
        exception.args = (message,)  # the API's sentence, naming the token's user where it matters
        return exception

    def _parse(self, parse: Callable[[Any], T], data: dict[str, Any], key: str | None = None) -> T:
        """``parse(data[key])`` (or of ``data``); ``ConfigurationError`` when it is not what the
        API answers."""
        try:
            return parse(data if key is None else data[key])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(
                f"{self.url} answered JSON the HumanLayer API does not give ({type(exc).__name__}: {exc})"
            ) from None


class _AlreadyDecided(HumanLayerError):
    """409 ``already_decided``: ``decision`` (JSON) is the one that stands."""

    def __init__(self, message: str, decision: dict[str, Any]) -> None:
        super().__init__(message)
        self.decision = decision


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error (handshake or certificate) ``exc`` comes of, if it does."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _segment(identifier: str) -> str:
    """An id as one path segment, whatever was typed."""
    return quote(identifier, safe="")


def _given(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _filter_params(filters: Filters) -> dict[str, str | None]:
    """``filters`` as the API's query parameters (``older_than``: a duration, ``90s``)."""
    age = age_seconds(filters.get("older_than"))
    return {
        "run_id": filters.get("run_id"),
        "kind": filters.get("kind"),
        "function": filters.get("function"),
        "older_than": None if age is None else f"{age:.3f}".rstrip("0").rstrip(".") + "s",
        "id_prefix": filters.get("id_prefix"),
    }


# -- the API's JSON back as the SDK's records --------------------------------------------------


def _listed(parse: Callable[[Any], T]) -> Callable[[list[Any]], list[T]]:
    return lambda items: [parse(item) for item in items]


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _vote(data: dict[str, Any]) -> Vote:
    return Vote(
        by=data["by"],
        approved=bool(data["approved"]),
        via=data["via"],
        comment=data.get("comment"),
        at=_time(data["at"]),
        user=data.get("user"),
        edits=data.get("edits"),
    )


def _decision(data: dict[str, Any]) -> Decision:
    return Decision(
        request_id=data["request_id"],
        approved=bool(data["approved"]),
        status=Status(data["status"]),
        by=data.get("by"),
        via=data["via"],
        comment=data.get("comment"),
        decided_at=_time(data["decided_at"]),
        answer=data.get("answer"),
        user=data.get("user"),
        votes=tuple(_vote(vote) for vote in data.get("votes") or ()),
        edits=data.get("edits"),
        grant=data.get("grant"),
    )


def _request(data: dict[str, Any]) -> ApprovalRequest:
    kwargs = data["kwargs"]
    fingerprint = data["fingerprint"]
    arguments = digest(kwargs)  # a store's digest: the SHA-256 of the arguments' JSON
    execution = data.get("execution")
    return ApprovalRequest(
        id=data["id"],
        kind=cast(Kind, data["kind"]),
        function=data["function"],
        kwargs=kwargs,
        context=data["context"],
        approvers=tuple(data["approvers"]),
        created_at=_time(data["created_at"]),
        expires_at=_time(data["expires_at"]),
        run_id=data.get("run_id"),
        message=data.get("message"),
        doc=data.get("doc"),
        decision=None if data.get("decision") is None else _decision(data["decision"]),
        # ``fingerprint`` (what ``seen=`` sends back) reads the digest: the API's own, where
        # the server digested the arguments otherwise than their JSON.
        digest=arguments if arguments.startswith(fingerprint) else fingerprint,
        execution=None if execution is None else Execution(execution["state"], execution.get("outcome")),
        requested_by=data.get("requested_by"),
        approvals=int(data["approvals"]),
        votes=tuple(_vote(vote) for vote in data.get("votes") or ()),
        editable=data.get("editable"),
        tool=data.get("tool"),
    )


def _page(data: dict[str, Any]) -> Page:
    requests = _listed(_request)(data["requests"])
    following = data["next"]
    if following is not None and not isinstance(following, str):
        raise TypeError(f"next is {following!r}")
    return Page(requests, following, int(data["total"]))


def _grant(data: dict[str, Any]) -> Grant:
    return Grant(
        id=data["id"],
        function=data["function"],
        where=data.get("where"),
        by=tuple(data["by"]),
        created_at=_time(data["created_at"]),
        expires_at=_time(data["expires_at"]),
        max_uses=data.get("max_uses"),
        uses=int(data["uses"]),
        approvals=int(data["approvals"]),
        approvers=tuple(data.get("approvers") or ()),
        users=tuple(data.get("users") or ()),
        revoked_by=data.get("revoked_by"),
        revoked_at=_optional_time(data.get("revoked_at")),
    )


def _entry(data: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        event=cast(AuditEvent, data["event"]),
        request_id=data["request_id"],
        at=_time(data["at"]),
        fields=data["fields"],
    )


def _answered(data: dict[str, Any]) -> Answered:
    return Answered(
        decision=None if data.get("decision") is None else _decision(data["decision"]),
        stands=bool(data["stands"]),
        votes=tuple(_vote(vote) for vote in data.get("votes") or ()),
        needed=int(data.get("needed") or 1),
        grant=None if data.get("grant") is None else _grant(data["grant"]),
    )


def _tool_stats(data: dict[str, Any]) -> ToolStats:
    counts = ("requests", "approved", "denied", "timed_out", "cancelled", "failed", "granted", "pending")
    return ToolStats(
        function=data["function"],
        **{name: int(data[name]) for name in counts},
        approval_rate=data["approval_rate"],
        median_wait_seconds=data["median_wait_seconds"],
        p95_wait_seconds=data["p95_wait_seconds"],
        top_approvers=tuple(ApproverCount(a["by"], int(a["count"])) for a in data["top_approvers"]),
        shadowed=int(data["shadowed"]),
    )
