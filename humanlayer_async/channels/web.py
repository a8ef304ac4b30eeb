"""WebChannel: the approvals console in a browser, served by the SDK's own listener.

Routes, under ``base_path`` (``/approvals`` by default):

- ``GET /approvals?code=…``   sign in with a single-use code: sets the session cookie,
  redirects to the clean URL
- ``GET /approvals``          the console (the oldest pending requests, a page of
  ``PAGE_SIZE``, with how many are pending; ``?after=<id>``: the next page; recent
  decisions), or the sign-in form when not signed in
- ``POST /approvals/sign-in``  sign in with a key typed into the form (same origin only)
- ``GET /approvals/events``   server-sent events: new requests and decisions, live
- ``GET /approvals/requests/{id}``   one request in full (untruncated), with its form
- ``POST /approvals/requests/{id}``  approve (with edited arguments, ``edit.<argument>``
  fields; with ``grant=<seconds>``, also allowing the same call that long), deny or answer
  (CSRF-protected)
- ``POST /approvals/batch``   approve or deny several requests, one ``id`` field each
  (CSRF-protected): one decision per request, the outcome of each in the answer
- ``GET /approvals/grants``   the live grants, each with its Revoke (and Confirm) form
- ``POST /approvals/grants/{id}/revoke``, ``…/confirm``  revoke a grant, or confirm one that
  waits for more approvers, as the signed-in user (CSRF-protected)
- ``GET /approvals/stats?since=7d``  per-tool approval stats from the audit trail, since a
  duration back or an ISO 8601 time (a malformed one is a 400)
- ``GET /approvals/static/…``  the page's CSS and JavaScript, shipped in the package

Keys travel only in that form or an ``Authorization: Bearer`` header, never in a URL
(``?token=`` is refused). Every refusal is a 4xx with a ``listener.refused`` log line; keys,
codes and cookies never appear in logs.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import os
import re
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Route

from .._audit import logger
from .._durations import parse_since
from .._edits import edit_text, parse_edit
from .._exceptions import (
    ArgumentsEdited,
    ConfigurationError,
    HumanLayerError,
    InvalidEdit,
    NotAnApprover,
    StoreError,
    UnknownGrant,
    UnknownRequest,
)
from .._models import ApprovalRequest, Grant, Principal
from .._pages import Page, read_page
from .._refused import Refused
from .._render import describe_decision, describe_votes, summarize, visible
from .._stats import DEFAULT_SINCE, tool_stats
from ..listener import client_is_local
from . import _web_page
from ._grant_offer import GRANT_DURATIONS, check_grant_durations, describe_duration
from ._web_auth import Credentials, Session
from .base import Answered, BaseChannel, Decider, check_label

__all__ = ["WebChannel"]

TOKEN_ENV = "HUMANLAYER_WEB_TOKEN"
"""The environment variable read for the operator's token when none is given."""

DEFAULT_USER = "web-console"
"""Who decisions made with the single ``token`` are recorded as."""

COOKIE = "humanlayer_session"
HISTORY = 50
PAGE_SIZE = 50
"""Pending requests the console shows at a time, the oldest first (``?after=`` for the next)."""
SESSION_SECONDS = 12 * 3600
CODE_SECONDS = 300.0
"""How long a sign-in code is valid by default."""
CLOCK_SKEW = 300.0
"""How much longer a used code's claim is kept than the code: a fleet's clocks may disagree."""
KEEPALIVE_SECONDS = 15.0
SUBSCRIBER_BUFFER = 64
MIN_KEY_LENGTH = 16
MAX_COMMENT = 2000
MAX_ANSWER = 10000
MAX_EDITS = 50
"""Edited arguments one form may carry (``edit.<argument>`` fields)."""
MAX_EDIT = 10000
"""Characters of one edited value."""
MAX_EDIT_NAME = 200
"""Characters of the argument's name in an ``edit.<argument>`` field."""
EDIT_PREFIX = "edit."
MAX_BATCH = 200
"""Requests one batch decision may name (``id`` fields)."""

_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{8,128}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # ApprovalRequest.fingerprint
EDITED_SINCE = "The call was edited after this page showed it: reload the page, look at it again, and decide."
"""A request's or a grant's id, as routes take it."""
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ACTIONS = frozenset({"approve", "deny", "answer"})
_BATCH_ACTIONS = frozenset({"approve", "deny"})
_FIELDS = 10
"""Form fields besides the edits (``csrf``, ``action``, ``comment``, ``answer``, with room)."""
_ASSETS = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

EventKind = Literal["requested", "counted", "reminded", "decided"]
Handler = Callable[[Request], Awaitable[Response]]


def _refusal(
    status: int,
    reason: str,
    text: str | None = None,
    *,
    page: str | None = None,
    data: Mapping[str, object] | None = None,
    **fields: Any,
) -> Refused:
    """A refusal as the console answers it: ``page`` (HTML) or ``data`` (JSON) when given,
    else ``text`` (by default ``reason``), with the console's security headers; ``fields``
    go in the log line only."""
    if page is not None:
        return Refused(status, reason, body=page, media_type="text/html", headers=_SECURITY_HEADERS, **fields)
    if data is not None:
        body = json.dumps(data)
        return Refused(
            status, reason, body=body, media_type="application/json", headers=_SECURITY_HEADERS, **fields
        )
    return Refused(status, reason, body=text, headers=_SECURITY_HEADERS, **fields)


def _seen(value: str | None) -> str | None:
    """A posted fingerprint of the call as the page showed it (``None``: none sent, as from a
    script that saw no page); a malformed one is a 400."""
    if not value:
        return None
    if not _FINGERPRINT.fullmatch(value):
        raise _refusal(400, "malformed fingerprint", "seen must be the fingerprint the page showed")
    return value


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _single(fields: Mapping[str, list[str]]) -> dict[str, str]:
    """A parsed form's fields, each sent once."""
    if any(len(values) != 1 for values in fields.values()):
        raise _refusal(400, "repeated form field", "each form field may appear once")
    return {name: values[0] for name, values in fields.items()}


def _edit_fields(form: Mapping[str, str]) -> dict[str, str]:
    """The ``edit.<argument>`` fields of ``form``: argument name to the text typed (a
    textarea's line breaks, which browsers send as CRLF, as ``\\n``)."""
    typed = {
        name.removeprefix(EDIT_PREFIX): value.replace("\r\n", "\n")
        for name, value in form.items()
        if name.startswith(EDIT_PREFIX)
    }
    if len(typed) > MAX_EDITS:
        raise _refusal(400, "too many edits", f"at most {MAX_EDITS} arguments can be edited at once")
    if any(not name or len(name) > MAX_EDIT_NAME for name in typed):
        raise _refusal(400, "bad edit field", "each edit field is named edit.<argument>")
    return typed


def _edits(request: ApprovalRequest, typed: Mapping[str, str]) -> dict[str, Any]:
    """The edits among the ``typed`` fields: those whose value differs from the current one,
    read as the argument's type wants (``parse_edit``: JSON when that fits, else the text).
    A field that names no editable argument is always an edit: the engine refuses it, as it
    checks every edit (``InvalidEdit``)."""
    schemas = request.editable or {}
    edits: dict[str, Any] = {}
    for name, text in typed.items():
        schema = schemas.get(name)
        if schema is None:
            edits[name] = text
            continue
        shown = name in request.kwargs
        if shown and text == edit_text(request.kwargs[name], schema):
            continue  # as the form showed it
        if len(text) > MAX_EDIT:
            raise _refusal(400, "field too long", f"the value of {name!r} is too long")
        value = parse_edit(text, schema)
        if not (shown and _same(value, request.kwargs[name])):
            edits[name] = value
    return edits


def _same(value: Any, current: Any) -> bool:
    """``5000`` is ``5000.0``, but ``True`` is not ``1``."""
    return bool(value == current) and isinstance(value, bool) == isinstance(current, bool)


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web_static", name).read_bytes()


def _check_key(key: object, owner: str) -> str:
    if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
        raise ConfigurationError(
            f"the key of {owner} must be a string of at least {MIN_KEY_LENGTH} characters"
        )
    return key


def _check_emails(emails: Mapping[str, str], users: set[str]) -> dict[str, str]:
    """``emails`` once every key is a user and every value looks like an address (lower-cased)."""
    for user, email in emails.items():
        if user not in users:
            raise ConfigurationError(f"emails= names {user!r}, who is not one of the users")
        if not isinstance(email, str) or email.count("@") != 1 or email != email.strip():
            raise ConfigurationError(f"the email of {user!r} must be an address such as alice@company.com")
    return {user: email.lower() for user, email in emails.items()}


def _grant_json(grant: Grant) -> dict[str, object]:
    """What a script is told of a grant."""
    return {
        "id": grant.id,
        "function": grant.function,
        "by": list(grant.by),
        "expires_at": grant.expires_at.isoformat(),
        "uses": grant.uses,
        "max_uses": grant.max_uses,
        "approvals": grant.approvals,
        "confirmed": grant.confirmed,
        "revoked": grant.revoked_at is not None,
    }


def _check_base_path(base_path: str) -> str:
    stripped = base_path.rstrip("/")
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", stripped):
        raise ConfigurationError(f'base_path must be a path such as "/approvals", not {base_path!r}')
    return stripped


class WebChannel(BaseChannel):
    """The approvals console: a web page served by the listener at ``base_path``.

    The page lists pending requests (approve, deny with a reason, answer questions; approve
    or deny several at once) and recent decisions from every channel, updated live.
    Decisions go through the ``HumanLayer`` like any other channel's, so approver allowlists
    and first-wins apply.

    People sign in with a single-use link from ``login_url()`` (or ``humanlayer-async
    console-link``), with their key typed into the sign-in form, or, from scripts, with
    the key in an ``Authorization: Bearer`` header. Sessions are signed cookies, so every
    process configured with the same keys (and store) serves the same signed-in people.

    Args:
        token: The operator's key; decisions made with it are recorded as ``web-console``.
        label: What a ``Policy`` names this channel by (its ``channels = [...]``). Default:
            ``"web"``, its kind.
            Default: ``$HUMANLAYER_WEB_TOKEN`` or, when that is unset and no ``users``
            are given, a new random token printed (to stderr), with a sign-in link,
            when the listener starts.
        users: Named approvers, ``{"alice": "<key>", ...}``: each signs in with their own
            key and decides as their name. Keys are at least 16 characters.
        emails: Each named user's email, ``{"alice": "alice@company.com"}``: approver lists
            may then name them by it, as Slack and email approvers are named, and their
            decisions record it as ``by`` (with the name as ``Decision.user``).
        base_path: Where the console is served on the listener.
        allow_remote: Serve clients other than loopback ones. Off by default, since the
            listener may be public for Slack and email callbacks.
        code_lifetime: Seconds a sign-in link from ``login_url()`` stays valid (it works once).
        grant_durations: The durations (seconds or ``timedelta``, at most 3) offered next to
            Approve on a pending tool call as "Approve, and allow the same for 1 hour": the
            approval also lets the same call (every unmasked argument equal) run without
            asking for that long. ``()`` offers none. The live grants are listed, to revoke,
            at ``{base_path}/grants``.
    """

    name = "web"

    def __init__(
        self,
        *,
        label: str | None = None,
        token: str | None = None,
        users: Mapping[str, str] | None = None,
        emails: Mapping[str, str] | None = None,
        base_path: str = "/approvals",
        allow_remote: bool = False,
        code_lifetime: float | timedelta = CODE_SECONDS,
        grant_durations: Sequence[float | timedelta] = GRANT_DURATIONS,
    ) -> None:
        self.label = check_label(label, self.name)
        self._generated: str | None = None
        if token is None and users is None:
            token = os.environ.get(TOKEN_ENV) or None
            if token is None:
                token = self._generated = secrets.token_urlsafe(24)
            else:
                _check_key(token, f"${TOKEN_ENV}")
        owners: dict[str, str] = {}
        for user, key in (users or {}).items():
            if not isinstance(user, str) or not user.strip():
                raise ConfigurationError(f"user names must be non-empty strings, not {user!r}")
            if _check_key(key, repr(user)) in owners:
                raise ConfigurationError(f"{user!r} has the same key as {owners[key]!r}")
            owners[key] = user
        if token is not None:
            if _check_key(token, "token") in owners:
                raise ConfigurationError(f"token is also the key of {owners[token]!r}")
            if DEFAULT_USER in owners.values():
                raise ConfigurationError(f"token decides as {DEFAULT_USER!r}, which is also a user's name")
            owners[token] = DEFAULT_USER
        self._credentials = Credentials({user: key for key, user in owners.items()})
        self._emails = _check_emails(emails or {}, set(owners.values()))
        self._token = token
        lifetime = code_lifetime.total_seconds() if isinstance(code_lifetime, timedelta) else code_lifetime
        if not lifetime > 0:
            raise ConfigurationError(
                f"code_lifetime must be a positive number of seconds, not {code_lifetime!r}"
            )
        self.code_lifetime = float(lifetime)
        self.grant_durations = check_grant_durations(grant_durations)
        """The durations offered with an approval, in seconds."""
        self._grant_values = {_web_page.grant_value(seconds): seconds for seconds in self.grant_durations}
        self.base_path = _check_base_path(base_path)
        self.allow_remote = allow_remote
        self._listener_url: str | None = None
        self._decider: Decider | None = None
        self._subscribers: dict[MemoryObjectSendStream[tuple[EventKind, ApprovalRequest]], None] = {}
        self._history: OrderedDict[str, ApprovalRequest] = OrderedDict()

    def __repr__(self) -> str:
        users = list(self.users)
        return f"WebChannel(users={users!r}, base_path={self.base_path!r}, allow_remote={self.allow_remote})"

    @property
    def users(self) -> tuple[str, ...]:
        """Who may sign in (``web-console`` for the single token)."""
        return self._credentials.users

    @property
    def url(self) -> str | None:
        """The console's URL (without a token) once the embedded listener serves it."""
        return None if self._listener_url is None else self._listener_url + self.base_path

    def login_url(self, base_url: str | None = None, *, user: str | None = None) -> str:
        """A new sign-in link: ``<base_url>/approvals?code=…``, valid once, for ``code_lifetime``.

        Opening it signs the browser in as ``user`` and redirects to the console's clean
        URL; the link then no longer works, and it never carries a key. Any process
        configured with the same keys and store accepts it. ``base_url`` defaults to the
        embedded listener's URL; ``user`` names the approver (default: the single token's
        ``web-console``, or the only user).
        """
        base = base_url or self._listener_url
        if base is None:
            raise ConfigurationError("the listener is not serving yet: pass the base URL the console is at")
        wanted = user or (DEFAULT_USER if self._token is not None else None)
        names = [name for name in self.users if name == wanted or wanted is None]
        if len(names) != 1:
            raise ConfigurationError(f"name one of the users {list(self.users)} to get their sign-in link")
        code = self._credentials.code(names[0], self.code_lifetime)
        return f"{base.rstrip('/')}{self.base_path}?code={code}"

    def listening(self, url: str) -> None:
        """Print where the console is; with a generated token, a sign-in link and the token."""
        self._listener_url = url
        if self._generated is None:
            print(f"humanlayer-async web console: {self.url}", file=sys.stderr, flush=True)
            return
        print(
            f"humanlayer-async web console: {self.login_url()}\n"
            f"  (a sign-in link: it works once, for {_web_page.duration(self.code_lifetime)};"
            f" then sign in at {self.url} with the token {self._generated})",
            file=sys.stderr,
            flush=True,
        )

    # -- the Channel protocol ----------------------------------------------------------

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self._decider = decider
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self._decider = None
            self._close_streams()

    async def send(self, request: ApprovalRequest) -> str | None:
        self._publish("requested", request)
        return request.short_id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        self._remember(request)
        self._publish("decided", request)

    async def progress(self, request: ApprovalRequest, ref: str | None) -> None:
        """A vote counted: open pages redraw the request's card with the count."""
        self._publish("counted", request)

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        """The request still waits (``remind_every=``): open pages mark its card and say so."""
        self._publish("reminded", request)

    def routes(self) -> Sequence[BaseRoute]:
        base = self.base_path
        # Every method reaches the guard, so a wrong one is refused (and logged) there.
        return [
            Route(base, self._guard(self._page, {"GET"}), methods=_ALL_METHODS),
            Route(f"{base}/sign-in", self._guard(self._sign_in_form, {"POST"}), methods=_ALL_METHODS),
            Route(f"{base}/events", self._guard(self._events, {"GET"}), methods=_ALL_METHODS),
            Route(
                f"{base}/requests/{{request_id}}",
                self._guard(self._request, {"GET", "POST"}),
                methods=_ALL_METHODS,
            ),
            Route(f"{base}/batch", self._guard(self._batch, {"POST"}), methods=_ALL_METHODS),
            Route(f"{base}/grants", self._guard(self._grants, {"GET"}), methods=_ALL_METHODS),
            Route(
                f"{base}/grants/{{grant_id}}/revoke",
                self._guard(self._revoke, {"POST"}),
                methods=_ALL_METHODS,
            ),
            Route(
                f"{base}/grants/{{grant_id}}/confirm",
                self._guard(self._confirm, {"POST"}),
                methods=_ALL_METHODS,
            ),
            Route(f"{base}/stats", self._guard(self._stats, {"GET"}), methods=_ALL_METHODS),
            Route(f"{base}/static/{{name}}", self._guard(self._static, {"GET"}), methods=_ALL_METHODS),
            Route(f"{base}/{{rest:path}}", self._guard(self._not_found, set()), methods=_ALL_METHODS),
        ]

    async def aclose(self) -> None:
        self._close_streams()

    # -- live events -------------------------------------------------------------------

    def _remember(self, request: ApprovalRequest) -> None:
        self._history.pop(request.id, None)
        self._history[request.id] = request
        while len(self._history) > HISTORY:
            self._history.popitem(last=False)

    def _publish(self, kind: EventKind, request: ApprovalRequest) -> None:
        for stream in list(self._subscribers):
            try:
                stream.send_nowait((kind, request))
            except anyio.WouldBlock:
                # A reader this far behind reconnects and gets a fresh snapshot.
                logger.warning("web.slow_subscriber_dropped")
                self._subscribers.pop(stream, None)
                stream.close()
            except anyio.BrokenResourceError:
                self._subscribers.pop(stream, None)

    def _close_streams(self) -> None:
        for stream in list(self._subscribers):
            stream.close()
        self._subscribers.clear()

    # -- request handling --------------------------------------------------------------

    def _guard(self, handler: Handler, methods: Collection[str]) -> Handler:
        """``handler``, for the allowed ``methods`` and clients only; what it refuses (it
        raises ``Refused``) the listener answers and logs."""

        async def endpoint(request: Request) -> Response:
            if methods and request.method not in methods:
                raise _refusal(405, "method not allowed")
            if not self.allow_remote and not client_is_local(request.scope):
                raise _refusal(403, "not a loopback client", "the console only serves this machine")
            if "token" in request.query_params:
                raise _refusal(
                    400,
                    "token in URL",
                    page=self._sign_in_page(
                        request,
                        "Keys never go in a URL, where browser history and access logs keep"
                        " them: this one was refused. Type it into the form below instead.",
                    ),
                )
            return await handler(request)

        return endpoint

    def _base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + self.base_path

    def _running(self) -> Decider:
        if self._decider is None:
            raise _refusal(503, "channel not running", "the console is not running")
        return self._decider

    def _sign_in_page(self, request: Request, message: str | None = None) -> str:
        return _web_page.sign_in_page(base=self._base(request), message=message)

    def _session(self, request: Request, *, page: bool = False) -> Session:
        """Who is signed in: by an ``Authorization: Bearer`` key, else by the session cookie.

        ``page``: refuse with the sign-in page (for what a browser opens) instead of text.
        """
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            user = self._credentials.owner(key.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise _refusal(401, "wrong token", "wrong token")
            return Session(user, None)
        cookie = request.cookies.get(COOKIE)
        session = None if cookie is None else self._credentials.read_session(cookie)
        if session is None:
            raise _refusal(
                401,
                "no session" if cookie is None else "invalid session",
                "sign in: open a sign-in link (humanlayer-async console-link) or the console's page",
                page=self._sign_in_page(request) if page else None,
            )
        return session

    async def _redeem(self, request: Request, value: str) -> Response:
        """Exchange a sign-in code, once, for a session."""
        decider = self._running()
        code = self._credentials.read_code(value)
        if code is None:
            raise self._bad_code(request, "forged sign-in code")
        if code.expires <= time.time():
            raise self._bad_code(request, "expired sign-in code")
        expires_at = datetime.fromtimestamp(code.expires + CLOCK_SKEW, UTC)
        try:
            claimed = await decider.claim(f"web-sign-in:{code.nonce}", expires_at)
        except StoreError as exc:
            raise _refusal(503, "store unavailable", "the store is unavailable: try again") from exc
        if not claimed:
            raise self._bad_code(request, "used sign-in code")
        return self._signed_in(request, code.user)

    def _bad_code(self, request: Request, reason: str) -> Refused:
        message = (
            "This sign-in link is not valid: a link works once, for a few minutes. Get a new one"
            " (humanlayer-async console-link), or sign in with your key."
        )
        return _refusal(401, reason, page=self._sign_in_page(request, message))

    async def _sign_in_form(self, request: Request) -> Response:
        self._check_same_origin(request, required=True)
        form = await self._form(request)
        user = self._credentials.owner(form.get("token", ""))
        if user is None:
            raise _refusal(401, "wrong token", page=self._sign_in_page(request, "Wrong key: try again."))
        return self._signed_in(request, user)

    def _signed_in(self, request: Request, user: str) -> Response:
        cookie = self._credentials.session(user, SESSION_SECONDS)
        logger.info("web.signed_in", user=user)
        base = self._base(request)
        response = RedirectResponse(base, status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            path=base,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _check_same_origin(self, request: Request, *, required: bool = False) -> None:
        """CSRF: the browser must not say the request comes from another origin.

        ``Sec-Fetch-Site`` decides where the browser sends it (only browsers set it: to
        loopback and HTTPS origins). Else ``Origin`` must be this origin when present,
        and, with ``required``, present. The console's own pages post with ``Origin: null``
        (their ``Referrer-Policy`` is ``no-referrer``), so a browser posting a form over
        plain HTTP from another machine is refused: serve remote clients over HTTPS.
        """
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None:
            if fetch_site != "same-origin":
                raise _refusal(403, "cross-site request", "cross-site requests are refused")
            return
        origin = request.headers.get("origin")
        if origin is None and required:
            raise _refusal(403, "no origin", "sign in from the console's page")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise _refusal(403, "cross-origin request", "cross-origin requests are refused")

    async def _form(self, request: Request) -> dict[str, str]:
        return _single(await self._form_values(request, limit=_FIELDS + MAX_EDITS))

    async def _form_values(self, request: Request, *, limit: int) -> dict[str, list[str]]:
        """The posted form's fields, each with every value sent; more than ``limit`` is a 400."""
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _refusal(415, "not a form", "send application/x-www-form-urlencoded")
        try:
            return parse_qs(
                (await request.body()).decode(),
                keep_blank_values=True,
                errors="strict",
                max_num_fields=limit,
            )
        except ValueError as exc:
            raise _refusal(400, "malformed form", "malformed form") from exc

    def _check_csrf(self, request: Request, session: Session, form: Mapping[str, str]) -> None:
        """A post made with the session cookie, which browsers send along: it must come from
        the console's page (same origin, the session's CSRF token)."""
        if session.csrf is None:
            return  # a Bearer key, which browsers never send by themselves
        self._check_same_origin(request)
        sent = request.headers.get("x-csrf-token") or form.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise _refusal(403, "bad csrf token", "the form is stale: reload the page")

    async def _page(self, request: Request) -> Response:
        code = request.query_params.get("code")
        if code is not None:
            return await self._redeem(request, code)
        session = self._session(request, page=True)
        decider = self._running()
        base = self._base(request)
        after = self._after(request)
        page = await self._read_page(decider, after, base)
        pending, history = self._lists(page.requests, session, base)
        selectable = [r for r in page.requests if self._selectable(r, session)]
        html = _web_page.page(
            user=session.user,
            csrf=session.csrf or "",
            base=base,
            pending=pending,
            history=history,
            selectors=_web_page.selectors(selectable),
            pages=self._pages(page, base, after),
            events=f"{base}/events" if after is None else f"{base}/events?after={after}",
        )
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    @staticmethod
    def _after(request: Request) -> str | None:
        """The page's ``?after=``: the id the cards start after (``None``: the first page)."""
        after = request.query_params.get("after") or None
        if after is not None and not _REQUEST_ID.fullmatch(after):
            raise _refusal(400, "malformed after", "after must be a request's id")
        return after

    async def _read_page(self, decider: Decider, after: str | None, base: str) -> Page:
        """The ``PAGE_SIZE`` oldest pending requests after ``after`` and how many are pending:
        the console never reads every one of them."""
        try:
            return await read_page(decider, limit=PAGE_SIZE, after=after)
        except UnknownRequest:
            raise _refusal(
                404,
                "unknown after",
                "The request this page started after is no longer kept.",
                page=_web_page.message_page(
                    "Page not found",
                    "The request this page started after is no longer kept.",
                    links=[(base, "First page")],
                ),
            ) from None

    @staticmethod
    def _pages(page: Page, base: str, after: str | None) -> str:
        return _web_page.pages(
            shown=len(page.requests), total=page.total, base=base, following=page.next, after=after
        )

    def _lists(self, requests: Sequence[ApprovalRequest], session: Session, base: str) -> tuple[str, str]:
        pending = _web_page.pending_list(
            requests,
            action_for=lambda r: f"{base}/requests/{r.id}",
            csrf=session.csrf or "",
            now=datetime.now(UTC),
            selectable=lambda r: self._selectable(r, session),
            grants=self.grant_durations,
        )
        return pending, _web_page.history_list(reversed(self._history.values()))

    def _selectable(self, request: ApprovalRequest, session: Session) -> bool:
        """Whether ``request``'s card gets a batch checkbox: an approval its user may decide."""
        return request.kind == "approval" and request.may_decide(self._who(session.user))

    async def _events(self, request: Request) -> Response:
        session = self._session(request)
        decider = self._running()
        base = self._base(request)
        after = self._after(request)
        if after is not None:  # refused before the stream starts: an EventSource then stops retrying
            await self._read_page(decider, after, base)
        send, receive = anyio.create_memory_object_stream[tuple[EventKind, ApprovalRequest]](
            SUBSCRIBER_BUFFER
        )
        self._subscribers[send] = None

        def event(kind: str, data: Mapping[str, str]) -> str:
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            try:
                with receive:
                    page = await self._read_page(decider, after, base)
                    pending, history = self._lists(page.requests, session, base)
                    pages = self._pages(page, base, after)
                    snapshot = {"pending": pending, "history": history, "pages": pages}
                    yield "retry: 2000\n" + event("snapshot", snapshot)
                    while True:
                        with anyio.move_on_after(KEEPALIVE_SECONDS) as idle:
                            try:
                                kind, item = await receive.receive()
                            except anyio.EndOfStream:
                                return
                        if idle.cancelled_caught:
                            yield ": keepalive\n\n"
                        elif kind in ("requested", "counted"):
                            html = _web_page.card(
                                item,
                                action=f"{base}/requests/{item.id}",
                                csrf=session.csrf or "",
                                now=datetime.now(UTC),
                                selectable=self._selectable(item, session),
                                grants=self.grant_durations,
                            )
                            said = summarize(item)
                            if kind == "counted":
                                said = f"{said}: {describe_votes(item.votes, item.approvals)}"
                            yield event(kind, {"id": item.id, "html": html, "summary": said})
                        elif kind == "reminded":
                            said = f"Reminder: {summarize(item)} still waits for a decision"
                            yield event(kind, {"id": item.id, "summary": said})
                        else:
                            outcome = "" if item.decision is None else describe_decision(item.decision)
                            html = _web_page.history_item(item)
                            yield event(kind, {"id": item.id, "html": html, "summary": outcome})
            finally:
                self._subscribers.pop(send, None)
                send.close()

        headers = {**_SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def _request(self, request: Request) -> Response:
        return await (self._detail if request.method == "GET" else self._decide)(request)

    async def _detail(self, request: Request) -> Response:
        session = self._session(request, page=True)
        decider = self._running()
        request_id = request.path_params["request_id"]
        shown = None
        if _REQUEST_ID.fullmatch(request_id):
            with contextlib.suppress(UnknownRequest):
                shown = await decider.get(request_id)
        if shown is None:
            page = _web_page.message_page("No such request", "No request has this id (or it was pruned).")
            raise _refusal(404, "unknown request", page=page)
        base = self._base(request)
        html = _web_page.detail_page(
            shown,
            user=session.user,
            csrf=session.csrf or "",
            base=base,
            action=f"{base}/requests/{shown.id}",
            may_decide=shown.may_decide(self._who(session.user)),
            grants=self.grant_durations,
        )
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    async def _decide(self, request: Request) -> Response:
        """Decide a request, from the console's forms or a script.

        A form (``application/x-www-form-urlencoded``) with ``action=approve|deny|answer``,
        ``comment``, ``answer`` and, to approve with changed arguments, one field
        ``edit.<argument>`` per argument to change: its new value, read as JSON when that fits
        the argument's type, else as text (``edit.amount=5000``, ``edit.tags=["a","b"]``,
        ``edit.memo=two words``). A field whose value is the current one is no edit.
        ``grant=<seconds>`` (one of ``grant_durations``; it implies ``action=approve``) also
        allows the same call for that long. Browsers send the session's ``csrf``; scripts
        send ``Authorization: Bearer <key>`` and, for JSON answers, ``Accept:
        application/json``. An edit the request does not allow (an argument that is not
        editable or is masked, a value of the wrong type) is a 400 naming the argument,
        ``{"error": ..., "argument": ...}`` in JSON, and decides nothing; so is a grant
        duration that is not offered.
        """
        session = self._session(request)
        form = await self._form(request)
        self._check_csrf(request, session, form)
        decider = self._running()
        request_id = request.path_params["request_id"]
        grant = self._grant_field(form)
        action = form.get("action", "approve" if grant is not None else "")
        if action not in _ACTIONS:
            raise _refusal(400, "unknown action", "action must be approve, deny or answer")
        if grant is not None and action != "approve":
            raise _refusal(400, "grant without approval", "a grant goes with an approval")
        comment = form.get("comment", "").strip() or None
        answer = form.get("answer", "").strip()
        if (comment and len(comment) > MAX_COMMENT) or len(answer) > MAX_ANSWER:
            raise _refusal(400, "field too long", "the comment or answer is too long")
        if action == "answer" and not answer:
            raise _refusal(400, "empty answer", "type an answer first")
        typed = _edit_fields(form)
        if not _REQUEST_ID.fullmatch(request_id):
            raise _refusal(404, "unknown request", "no such request")
        seen = _seen(form.get("seen"))
        who = self._who(session.user)
        try:
            edits = _edits(await decider.get(request_id), typed) if typed else {}
            approved = action == "approve"
            if edits and action == "answer":
                raise InvalidEdit(request_id, "", "edits go with an approval, not an answer")
            # edits= and grant= only when given: a Decider written before them takes neither.
            extra: dict[str, Any] = {}
            if edits:
                extra["edits"] = edits
            if grant is not None:
                extra["grant"] = grant
            if seen is not None:
                extra["seen"] = seen
            if action == "answer":
                answered = await decider.respond(request_id, answer, by=who, via=self.name)
            else:
                answered = await decider.decide(
                    request_id, approved, by=who, comment=comment, via=self.name, **extra
                )
        except UnknownRequest as exc:
            raise _refusal(404, "unknown request", "no such request") from exc
        except NotAnApprover as exc:
            why = "requested this call and may not decide it" if exc.requester else "is not an approver of it"
            raise _refusal(403, "not an approver", f"{session.user} {why}") from exc
        except InvalidEdit as exc:
            raise self._invalid_edit(request, exc) from exc
        except ArgumentsEdited as exc:
            raise _refusal(409, "edited since shown", f"{EDITED_SINCE} Nothing was decided.") from exc
        except HumanLayerError as exc:
            raise _refusal(409, "not decidable", str(exc)) from exc
        return await self._decided(request, decider, answered, session, grant)

    def _grant_field(self, form: Mapping[str, str]) -> float | None:
        """The seconds of the posted ``grant`` field, one of ``grant_durations`` (``None``
        when not posted); any other value is a 400 that decides nothing."""
        text = form.get("grant")
        if text is None:
            return None
        seconds = self._grant_values.get(text)
        if seconds is None:
            offered = ", ".join(
                f"{value} ({describe_duration(s)})" for value, s in self._grant_values.items()
            )
            why = f"grant must be one of the offered durations, in seconds: {offered}" if offered else ""
            raise _refusal(400, "grant not offered", why or "this console offers no grants")
        return seconds

    async def _batch(self, request: Request) -> Response:
        """Approve or deny several requests at once: each an individual, audited decision.

        A form with one ``id`` field per request (at most ``MAX_BATCH``),
        ``action=approve|deny`` and ``comment`` (the reason: required to deny), with the
        session's ``csrf`` or a Bearer key as for one request. Exactly the ids sent are decided,
        each by one ``decide`` as the single route decides it (approved as it is: a batch
        takes no edits), never a request that came after the page. The answer says what each
        came to: ``{"results": [{"id": ..., "status": ..., "message": ...}, ...]}`` for
        ``Accept: application/json``, else a page. Bad input is a 4xx that decides nothing.
        """
        session = self._session(request)
        fields = await self._form_values(request, limit=_FIELDS + 2 * MAX_BATCH)
        ids = fields.pop("id", [])
        form = _single(fields)
        self._check_csrf(request, session, form)
        decider = self._running()
        action = form.get("action", "")
        if action not in _BATCH_ACTIONS:
            raise _refusal(400, "unknown action", "action must be approve or deny")
        comment = form.get("comment", "").strip() or None
        if comment and len(comment) > MAX_COMMENT:
            raise _refusal(400, "field too long", "the comment is too long")
        if action == "deny" and not comment:
            raise _refusal(400, "no reason", "give the reason for denying them in the comment")
        if any(name.startswith(EDIT_PREFIX) for name in form):
            raise _refusal(
                400, "edits in a batch", "a batch approves as they are: edit on the request's page"
            )
        if "grant" in form:
            raise _refusal(400, "grant in a batch", "a batch gives no grants: grant from the request's card")
        if not ids:
            raise _refusal(400, "no requests", "select the requests to decide")
        if len(ids) > MAX_BATCH:
            raise _refusal(400, "too many requests", f"at most {MAX_BATCH} requests at once")
        # Each "<request id> <fingerprint>" (or just the id, from a script that saw nothing).
        shown = {request_id: _seen(seen) for request_id, _, seen in (value.partition(" ") for value in ids)}
        if not all(_REQUEST_ID.fullmatch(request_id) for request_id in shown):
            raise _refusal(400, "malformed request id", "each id must be a request's id")
        approved = action == "approve"
        results = [
            await self._decide_one(decider, request_id, approved, comment, session, seen)
            for request_id, seen in shown.items()  # each once, in the order sent
        ]
        logger.info(
            "web.batch",
            by=session.user,
            action=action,
            requests=len(results),
            decided=sum(result.status == "decided" for result in results),
        )
        if _wants_json(request):
            body = {"results": [{"id": r.id, "status": r.status, "message": r.message} for r in results]}
            return JSONResponse(body, headers=_SECURITY_HEADERS)
        html = _web_page.batch_page(results, user=session.user, base=self._base(request), approved=approved)
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    async def _decide_one(
        self,
        decider: Decider,
        request_id: str,
        approved: bool,
        comment: str | None,
        session: Session,
        seen: str | None,
    ) -> _web_page.BatchResult:
        """One request of a batch, decided as ``_decide`` decides it; what that came to."""
        what = ""
        try:
            shown = await decider.get(request_id)
            what = summarize(shown)
            if shown.kind != "approval":
                return _web_page.BatchResult(
                    request_id, "not_decidable", "a question: answer it on its own", what
                )
            extra: dict[str, Any] = {} if seen is None else {"seen": seen}
            answered = await decider.decide(
                request_id, approved, by=self._who(session.user), comment=comment, via=self.name, **extra
            )
        except UnknownRequest:
            return _web_page.BatchResult(request_id, "unknown", "no such request")
        except NotAnApprover as exc:
            why = "requested this call and may not decide it" if exc.requester else "is not an approver of it"
            return _web_page.BatchResult(request_id, "not_an_approver", f"{session.user} {why}", what)
        except ArgumentsEdited:
            return _web_page.BatchResult(request_id, "not_decidable", EDITED_SINCE, what)
        except HumanLayerError as exc:
            return _web_page.BatchResult(request_id, "not_decidable", str(exc), what)
        decision = answered.decision
        if decision is None:  # a vote: the request waits for more
            progress = f"counted: {describe_votes(answered.votes, answered.needed)}"
            return _web_page.BatchResult(request_id, "counted", progress, what)
        if not answered.stands:
            logger.info("web.already_decided", request_id=request_id, by=session.user)
            message = f"already {describe_decision(decision)}"
            return _web_page.BatchResult(request_id, "already_decided", message, what)
        # Shown at once; a store failing now leaves the decision made, and the rest of the batch.
        with contextlib.suppress(HumanLayerError):
            decided = await decider.get(request_id)
            self._remember(decided)
            self._publish("decided", decided)
        return _web_page.BatchResult(request_id, "decided", describe_decision(decision), what)

    def _invalid_edit(self, request: Request, exc: InvalidEdit) -> Refused:
        """A 400 naming the argument an edit may not set: nothing was decided."""
        reason, argument = "invalid edit", exc.argument
        if _wants_json(request):
            return _refusal(400, reason, data={"error": str(exc), "argument": argument}, argument=argument)
        back = f"{self._base(request)}/requests/{exc.request_id}"
        page = _web_page.message_page(
            "Not approved: an edit was refused",
            f"{exc}. Nothing was decided: the request is still pending.",
            links=[(back, "Back to the request")],
        )
        return _refusal(400, reason, page=page, argument=argument)

    def _who(self, user: str) -> str | Principal:
        """A signed-in user as approver lists know them: by email too, when given one."""
        email = self._emails.get(user)
        return user if email is None else Principal(email, user)

    async def _decided(
        self,
        request: Request,
        decider: Decider,
        answered: Answered,
        session: Session,
        grant: float | None = None,
    ) -> Response:
        """What a decision came to (``grant``: the seconds of the grant asked for with it)."""
        decision, mine = answered.decision, answered.stands
        if decision is None:  # a vote: the request waits for more
            progress = f"counted: {describe_votes(answered.votes, answered.needed)}"
            if grant is not None:
                asked = describe_duration(grant)
                progress += f"; you asked to allow the same for {asked}: {_web_page.GRANT_QUORUM}"
            return self._outcome(request, "Vote counted", progress, "pending", grant=grant)
        given = None
        if mine:
            # Shown at once, also when the request was not delivered through this channel.
            decided = await decider.get(decision.request_id)
            self._remember(decided)
            self._publish("decided", decided)
            message = describe_decision(decision)
            if grant is not None:
                given = answered.grant
                message += f"; {_web_page.grant_outcome(given, approvals=decided.approvals)}"
        else:
            logger.info("web.already_decided", request_id=decision.request_id, by=session.user)
            message = f"already {describe_decision(decision)}"
            if grant is not None:
                message += "; no grant was given"
        title = "Decided" if mine else "Already decided"
        if given is not None:
            title = "Approved, and allowed the same"
        return self._outcome(
            request, title, message, decision.status.value, grant=grant, given=given, mine=mine
        )

    def _outcome(
        self,
        request: Request,
        title: str,
        message: str,
        status: str,
        *,
        grant: float | None,
        given: Grant | None = None,
        mine: bool = True,
    ) -> Response:
        """A decision's answer: JSON (with ``grant`` asked for, the grant given or ``null``);
        else a redirect to the console, or a page saying what came of it when it did not
        stand or a grant was asked for. 409 when it did not stand."""
        code = 200 if mine else 409
        base = self._base(request)
        if _wants_json(request):
            body: dict[str, object] = {"status": status, "message": message, "mine": mine}
            if grant is not None:
                body["grant"] = None if given is None else _grant_json(given)
            return JSONResponse(body, status_code=code, headers=_SECURITY_HEADERS)
        if mine and grant is None:
            return RedirectResponse(base, status_code=303, headers=_SECURITY_HEADERS)
        page = _web_page.message_page(
            title, message, links=[(base, "All requests"), (f"{base}/grants", "Grants")]
        )
        return HTMLResponse(page, status_code=code, headers=_SECURITY_HEADERS)

    # -- grants --------------------------------------------------------------------------

    async def _grants(self, request: Request) -> Response:
        """The live grants, each with the forms its user may use (revoke; confirm one that
        waits for more approvers)."""
        session = self._session(request, page=True)
        decider = self._running()
        try:
            live = await decider.grants()
        except StoreError as exc:
            raise _refusal(503, "store unavailable", "the store is unavailable: try again") from exc
        who = self._who(session.user)
        person = who if isinstance(who, Principal) else Principal(who)
        html = _web_page.grants_page(
            live,
            user=session.user,
            csrf=session.csrf or "",
            base=self._base(request),
            now=datetime.now(UTC),
            may_change=lambda grant: not grant.approvers or person.matches(grant.approvers),
            gave=lambda grant: any(grant.granted_by(name) for name in person.names),
        )
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    async def _revoke(self, request: Request) -> Response:
        return await self._change_grant(request, "revoke")

    async def _confirm(self, request: Request) -> Response:
        return await self._change_grant(request, "confirm")

    async def _change_grant(self, request: Request, change: Literal["revoke", "confirm"]) -> Response:
        """Revoke or confirm a grant as the signed-in user, from the grants page's forms or a
        script (the checks of a decision: session or Bearer key, CSRF, same origin).

        An unknown grant is a 404, one the user may not change (not an approver of its
        tool) a 403, confirming one expired, used up or revoked a 409: each decides nothing.
        The answer is a redirect to the grants page, or, for ``Accept: application/json``,
        ``{"status": "revoked" | "confirmed" | "pending", "message": ..., "grant": {...}}``.
        """
        session = self._session(request)
        form = await self._form(request) if await request.body() else {}  # a script needs no fields
        self._check_csrf(request, session, form)
        decider = self._running()
        grant_id = request.path_params["grant_id"]
        if not _REQUEST_ID.fullmatch(grant_id):
            raise _refusal(404, "unknown grant", "no such grant")
        act = decider.revoke_grant if change == "revoke" else decider.confirm_grant
        try:
            grant = await act(grant_id, by=self._who(session.user))
        except UnknownGrant as exc:
            raise _refusal(404, "unknown grant", "no such grant", grant_id=grant_id) from exc
        except NotAnApprover as exc:
            why = f"{session.user} is not an approver of this grant's tool"
            raise _refusal(403, "not an approver", why, grant_id=grant_id) from exc
        except StoreError as exc:
            raise _refusal(503, "store unavailable", "the store is unavailable: try again") from exc
        except HumanLayerError as exc:
            raise _refusal(409, f"grant not {change}able", str(exc), grant_id=grant_id) from exc
        if grant.revoked_at is not None:
            status = "revoked"
            message = f"revoked by {visible(grant.revoked_by or '')} at {grant.revoked_at:%H:%M:%S} UTC"
        elif grant.confirmed:
            status = "confirmed"
            message = f"confirmed: it allows calls until {grant.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        else:
            status = "pending"
            more = grant.approvals - len(grant.by)
            message = f"not active yet: needs {more} more approver{'' if more == 1 else 's'}"
        if _wants_json(request):
            body = {"status": status, "message": message, "grant": _grant_json(grant)}
            return JSONResponse(body, headers=_SECURITY_HEADERS)
        return RedirectResponse(f"{self._base(request)}/grants", status_code=303, headers=_SECURITY_HEADERS)

    # -- stats ---------------------------------------------------------------------------

    async def _stats(self, request: Request) -> Response:
        """Per-tool approval stats over the audit trail since ``?since=`` (default ``7d``): a
        duration back or an ISO 8601 time, as ``humanlayer-async stats --since`` takes it. A
        malformed one is a 400 page saying what is expected."""
        session = self._session(request, page=True)
        typed = request.query_params.get("since", DEFAULT_SINCE)
        base = self._base(request)
        try:
            since = parse_since(typed)
        except ValueError as exc:
            page = _web_page.message_page(
                "Not a time to count from",
                str(exc),
                links=[(f"{base}/stats", "Stats"), (base, "All requests")],
            )
            raise _refusal(400, "malformed since", page=page) from None
        decider = self._running()
        try:
            entries = await decider.history(since=since)
        except StoreError as exc:
            raise _refusal(503, "store unavailable", "the store is unavailable: try again") from exc
        # A busy week is a few hundred thousand entries: counted off the event loop.
        stats = await anyio.to_thread.run_sync(tool_stats, entries)
        html = _web_page.stats_page(stats, user=session.user, base=base, since=since, typed=typed)
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            raise _refusal(404, "unknown asset", "not found")
        content = _asset(name)
        headers = {**_SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(content, media_type=_ASSETS[name], headers=headers)

    async def _not_found(self, request: Request) -> Response:
        raise _refusal(404, "no such page", "not found")
