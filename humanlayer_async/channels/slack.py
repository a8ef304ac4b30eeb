"""SlackChannel: approval messages with buttons, and the clicks that come back as decisions.

Out: ``chat.postMessage`` with a bot token (``channel=``, a channel or a person; in a thread
with ``thread()``), or an incoming webhook (``webhook_url=``). In: Slack's interactivity
callbacks at ``POST /slack/events``, verified with the signing secret; Socket Mode with an
app-level token (no public URL); or the user's own slack-bolt app (``attach()``). All three
hand the same payloads to one handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import aiohttp
import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .._audit import logger
from .._edits import edit_text, parse_edit
from .._exceptions import (
    ArgumentsEdited,
    ChannelError,
    ConfigurationError,
    InvalidEdit,
    NotAnApprover,
    UnknownRequest,
)
from .._models import ApprovalRequest, Decision, Principal, acting_for, same_name
from .._refused import Refused
from .._render import describe_votes
from .._retry import Backoff, retry_after
from . import _dns
from . import _slack_blocks as blocks
from ._grant_offer import GRANT_DURATIONS, check_grant_durations, describe_duration
from ._slack_people import People, dig
from .base import BaseChannel, Decider, check_label

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncAck, AsyncApp

__all__ = ["SlackChannel"]

T = TypeVar("T")

_MAX_SKEW = 300  # seconds: Slack's own bound on a request timestamp
_HTTP_TIMEOUT = 10.0  # seconds for one call to Slack
_ATTEMPTS = 5  # tries for 5xx answers, timeouts and network errors
_BACKOFF = 0.25  # seconds before the first retry; doubles, with jitter
_BACKOFF_CAP = 8.0  # seconds: the longest wait between two retries
_UPDATE_WINDOW = 300.0  # seconds a message update or notice may keep retrying on 429
_LOOKUP_WINDOW = 2.0  # seconds a look-up of who someone is may take, retries included
_CONNECT_TIMEOUT = 15.0  # seconds for the Socket Mode connection at start
_UPDATES_AT_ONCE = 4  # message updates in flight at once (Slack allows chat.update ~50/min)
_ASKED_KEPT = timedelta(seconds=_UPDATE_WINDOW)  # how long a grant asked for waits for its message update
NOT_AN_APPROVER = blocks.markup("you are not an approver for this request")
YOUR_OWN = blocks.markup("you requested this call, so someone else must decide it")
UNKNOWN_REQUEST = blocks.markup("unknown request")
_SILENCE = blocks.markup("")
SHORTENED = blocks.markup(
    "This call is shortened in its message, so it is not approved from there: "
    "see all of it first (Show the full call, or another approval channel)."
)
TOO_LARGE = blocks.markup(
    "This request is too large to show in Slack: see it and decide it in another approval channel."
)
NOT_OFFERED = blocks.markup(
    "That is not one of the durations this channel offers, so nothing was decided: "
    "approve, or approve and allow the same with a button of the current message."
)
EDITED_SINCE = blocks.markup(
    "This call was edited after the message you answered showed it, so your answer did not count: "
    "look at the call as it is now, and decide again."
)
NOT_EDITABLE = blocks.markup(
    "Slack cannot edit this call (its editable arguments are masked or too long for a text box, "
    "or the call is too large to show): approve or deny it as it is, or edit it in another approval channel."
)
_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what a request id may look like
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # ApprovalRequest.fingerprint
_BOLT_ACTIONS = re.compile(
    "^(?:"
    + "|".join(
        map(
            re.escape,
            (
                blocks.APPROVE,
                *blocks.GRANTS,
                blocks.DENY,
                blocks.FULL,
                blocks.EDIT,
                blocks.ANSWER,
                blocks.ANSWER_INLINE,
            ),
        )
    )
    + ")$"
)
_BOLT_VIEWS = re.compile(
    "^(?:"
    + "|".join(map(re.escape, (blocks.DENY_VIEW, blocks.ANSWER_VIEW, blocks.FULL_VIEW, blocks.EDIT_VIEW)))
    + ")$"
)
"""Our action ids and modal callback ids, as registered on a user's Bolt app (nothing else)."""


@dataclass(frozen=True, slots=True)
class _Where:
    """Where the requests made in a context go: a channel or person, and a thread."""

    channel: str | None
    thread_ts: str | None


class _BadPayload(Refused):
    """A verified request whose body is not an interaction this channel handles: 400."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason, body=f"bad request: {reason}")


def _unknown(request_id: str) -> Refused:
    return Refused(404, "unknown request", body=UNKNOWN_REQUEST, request_id=request_id)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What a callback that is not refused gets back (200): a text, or for modals a JSON body.

    The text is ``Mrkdwn``: it may be told to whoever clicked, as an ephemeral message.
    ``counted`` says it confirms a vote rather than refusing anything; ``under`` is the
    modal input a submission's refusal is shown under.
    """

    text: blocks.Mrkdwn = _SILENCE
    body: dict[str, Any] | None = None
    counted: bool = False
    under: str = blocks.TEXT_BLOCK

    def response(self) -> Response:
        if self.body is not None:
            return JSONResponse(self.body)
        return PlainTextResponse(self.text)


@dataclass(frozen=True, slots=True)
class _Click:
    """One button click (or Enter in an answer box), from a ``block_actions`` payload."""

    action: str
    request_id: str
    user: str
    text: str | None  # what was typed in an answer box
    trigger_id: str | None
    channel: str | None
    response_url: str | None
    thread_ts: str | None = None  # the thread the clicked message is in
    seconds: str | None = None  # how long a grant button allows the same call, as its value says
    seen: str | None = None  # the call's fingerprint as the clicked message showed it


@dataclass(frozen=True, slots=True)
class _Asked:
    """A grant asked for with a request's one approval: its message's update says so."""

    seconds: float
    at: datetime  # before the decision: one made earlier (a double click) gave no grant


@dataclass(frozen=True, slots=True)
class _Submission:
    """A submitted modal, from a ``view_submission`` payload."""

    view: str
    request_id: str
    user: str
    text: str | None
    boxes: Mapping[str, str] | None = None  # the edit modal's boxes: argument → the text in it
    seen: str | None = None  # the call's fingerprint as the modal showed it


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed call to Slack, as the retry loop sees it."""

    status: int | None  # None: no HTTP answer (timeout, connection error)
    retry_after: str | None
    error: str


class _HTTPStatus(Exception):
    """A webhook or ``response_url`` answered something other than 200."""

    def __init__(self, status: int, retry_after: str | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.failure = _Failure(status, retry_after, text or f"HTTP {status}")


def _setting(value: str | None, variable: str) -> str | None:
    return value or os.environ.get(variable) or None


def _approvers(approvers: Iterable[str] | str | None) -> tuple[str, ...]:
    if approvers is None:
        return ()
    return (approvers,) if isinstance(approvers, str) else tuple(approvers)


class SlackChannel(BaseChannel):
    """Slack: a Block Kit message with Approve / Deny per request, decided by a click.

    Two ways out: the Web API (``channel``, with a bot token), whose messages are updated
    in place with ``chat.update`` and whose Deny and Answer buttons open modals; or an
    incoming webhook (``webhook_url``), whose messages are updated through the click's
    ``response_url`` and whose Deny decides at once. ``thread()`` sends the requests of
    one agent conversation into its Slack thread.
    Three ways in: HTTP callbacks at ``/slack/events`` verified with ``signing_secret``;
    Socket Mode with ``app_token`` (``xapp-...``), which needs no public URL; or, with
    neither, ``attach()`` to the slack-bolt app you already run, which receives them.

    Approver lists (the decorator's and this channel's) may name people by Slack user id
    (``U...``), by email (matched to the clicking user's profile; scope
    ``users:read.email``) and by user group (``S...``; scope ``usergroups:read``).
    Decisions record the approver's email as ``by`` when Slack shares it, and their user
    id as ``user``.

    Args:
        bot_token: A bot token (``xoxb-...``). Default: ``SLACK_BOT_TOKEN``.
        signing_secret: The app's signing secret. Default: ``SLACK_SIGNING_SECRET``.
        channel: Where the Web API posts requests: a channel (``C...``, ``#name``), or a
            person (``U...`` or an email) to message directly (scope ``im:write``).
        webhook_url: An incoming webhook URL, instead of ``channel`` and a bot token.
        app_token: An app-level token for Socket Mode. Default: ``SLACK_APP_TOKEN``.
        base_url: The Web API's base URL (an Enterprise Grid proxy, a test server).
        approvers: Who may decide through this channel (user ids, emails, user groups).
        label: What a ``Policy`` names this channel by (its ``channels = [...]``). Default:
            ``"slack"``, its kind.
            It narrows a decorator's list and never widens it: with both, an approver
            must be on both. Default: anyone who can click (or the decorator's list).
        mention_approvers: Mention the approvers (``<@U...>``, ``<!subteam^S...>``) in
            each request, so that Slack notifies them.
        grant_durations: The durations (seconds or ``timedelta``, at most three) offered next
            to Approve as "Approve, and allow the same for 1 hour": approve, and let calls of
            the same tool with the same arguments run without asking for that long (each
            button asks to confirm). ``()`` offers none.

    Raises:
        ConfigurationError: naming what is missing or contradictory.
    """

    name = "slack"

    def __init__(
        self,
        *,
        label: str | None = None,
        bot_token: str | None = None,
        signing_secret: str | None = None,
        channel: str | None = None,
        webhook_url: str | None = None,
        app_token: str | None = None,
        base_url: str = "https://slack.com/api/",
        approvers: Iterable[str] | str | None = None,
        mention_approvers: bool = False,
        grant_durations: Sequence[float | timedelta] = GRANT_DURATIONS,
    ) -> None:
        self.label = check_label(label, self.name)
        if channel and webhook_url:
            raise ConfigurationError(
                "SlackChannel takes channel= (the Web API, with a bot token) or webhook_url= "
                "(an incoming webhook), not both"
            )
        if not channel and not webhook_url:
            raise ConfigurationError(
                "SlackChannel needs channel= (with bot_token= or SLACK_BOT_TOKEN) for the Web API, "
                "or webhook_url= for an incoming webhook"
            )
        if webhook_url and bot_token:
            raise ConfigurationError("bot_token= posts to channel=; with webhook_url= leave it out")
        token = _setting(bot_token, "SLACK_BOT_TOKEN") if channel else None
        if channel and token is None:
            raise ConfigurationError(
                f"SlackChannel(channel={channel!r}) needs a bot token: pass bot_token= or set SLACK_BOT_TOKEN"
            )
        secret = _setting(signing_secret, "SLACK_SIGNING_SECRET")
        socket_token = _setting(app_token, "SLACK_APP_TOKEN")
        if secret is None and socket_token is None and not channel:
            raise ConfigurationError(
                "SlackChannel needs a way to receive clicks: signing_secret= (or SLACK_SIGNING_SECRET) "
                "for HTTP callbacks, or app_token= (or SLACK_APP_TOKEN) for Socket Mode"
            )
        if socket_token is not None and not socket_token.startswith("xapp-"):
            raise ConfigurationError("app_token must be an app-level token (xapp-...) with connections:write")
        self.channel = channel
        self.approvers = _approvers(approvers)
        self.mention_approvers = mention_approvers
        self.grant_durations = check_grant_durations(grant_durations)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._bot_token = token
        self._webhook_url = webhook_url
        self._app_token = socket_token
        self._verifier = None if secret is None else SignatureVerifier(secret)
        # What was passed, not read from the environment: attach() refuses only these.
        self._own_inbound = [
            name for name, value in (("signing_secret", signing_secret), ("app_token", app_token)) if value
        ]
        self._bolt: AsyncApp | None = None
        self._where: ContextVar[_Where | None] = ContextVar(f"slack_where_{id(self)}", default=None)
        self._people = People(self._api)
        self._send_lock = anyio.Lock()
        self._update_slots = anyio.Semaphore(_UPDATES_AT_ONCE)
        self._response_urls: dict[str, str] = {}  # webhook mode: request id → a click's response_url
        self._asked: dict[tuple[str, str], _Asked] = {}  # (request id, approver) → the grant they asked for
        self._decider: Decider | None = None
        self._web: AsyncWebClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: TaskGroup | None = None

    def __repr__(self) -> str:
        out = f"channel={self.channel!r}" if self.channel else "webhook"
        ways = [
            way
            for way, on in (("http", self._verifier), ("socket mode", self._app_token), ("bolt", self._bolt))
            if on
        ]
        return f"SlackChannel({out}, inbound={'+'.join(ways)!r}, approvers={list(self.approvers)!r})"

    # -- where requests go, and who receives the clicks ----------------------------------

    @contextlib.contextmanager
    def thread(
        self, *, channel: str | None = None, thread_ts: str | None = None, requested_by: str | None = None
    ) -> Iterator[None]:
        """Send the requests made inside to ``channel`` (default: the channel's own), as
        replies in the thread of message ``thread_ts``; their outcomes are posted there too.

        Around one agent turn: a context variable, so that concurrent conversations each
        keep their own thread. ``requested_by`` is whoever prompted the agent (a Slack user
        id, or their email to know them in every channel): they may never decide the
        requests made inside, wherever they answer.
        """
        if self._webhook_url is not None:
            raise ConfigurationError(
                "an incoming webhook posts to its one channel: thread() needs channel= and a bot token"
            )
        where = self._where.set(_Where(channel, thread_ts))
        try:
            with acting_for(requested_by):
                yield
        finally:
            self._where.reset(where)

    def attach(self, app: AsyncApp) -> None:
        """Take clicks through ``app``, the slack-bolt ``AsyncApp`` you already run.

        Registers our buttons' actions and our modals on it (ids prefixed ``hl_``, matched
        exactly); they use the app's request verification, its ``ack()`` and its client.
        The app keeps its Request URL, handlers, middleware and Socket Mode handler. Each
        click's decision is stored before it is acknowledged, whatever the app's
        ``process_before_response``. Call it before the ``HumanLayer`` starts.

        Raises:
            ConfigurationError: ``app`` is not an ``AsyncApp``, verifies no requests
                (``request_verification_enabled=False``: anyone could forge clicks), or
                this channel receives on its own (``signing_secret=``, ``app_token=``) or
                posts through a webhook.
        """
        from slack_bolt.async_app import AsyncApp
        from slack_bolt.middleware.request_verification.async_request_verification import (
            AsyncRequestVerification,
        )

        if not isinstance(app, AsyncApp):
            raise ConfigurationError(
                f"attach() takes a slack_bolt.async_app.AsyncApp, not {type(app).__name__}"
            )
        if self._webhook_url is not None:
            raise ConfigurationError(
                "attach() needs a SlackChannel with channel= and a bot token, not a webhook"
            )
        if self._own_inbound:
            raise ConfigurationError(
                "the Bolt app receives the clicks: build this SlackChannel without "
                + " and ".join(self._own_inbound)
            )
        if self._bolt is not None:
            raise ConfigurationError("this SlackChannel is attached to a Bolt app already")
        middleware = getattr(app, "_async_middleware_list", None) or ()
        if not any(isinstance(m, AsyncRequestVerification) for m in middleware):
            raise ConfigurationError(
                "the Bolt app does not verify Slack's signatures (request_verification_enabled=False): "
                "anyone could forge approvals through it"
            )
        self._verifier = self._app_token = None  # read from the environment: they are the app's
        app.action(_BOLT_ACTIONS)(self._bolt_action)
        app.view(_BOLT_VIEWS)(self._bolt_view)
        self._bolt = app

    async def _bolt_action(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """A click through the user's Bolt app: decided (stored), then acknowledged."""
        try:
            await self._handle(body, client)
        except Refused as refused:  # acknowledged all the same: nothing was decided
            refused.log(via="bolt")
            if refused.status >= 500:  # not running here: unacknowledged, Slack tells whoever clicked
                return
            if refused.status == 404:
                with contextlib.suppress(Refused):
                    self._tell(_parse_click(body), UNKNOWN_REQUEST, client)
        await ack()

    async def _bolt_view(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """A submitted modal through the user's Bolt app: decided (stored), then acknowledged."""
        try:
            reply = await self._handle(body, client)
        except Refused as refused:
            refused.log(via="bolt")
            if refused.status >= 500:
                return
            text = UNKNOWN_REQUEST if refused.status == 404 else blocks.markup("this form cannot be used")
            reply = _Reply(body={"response_action": "errors", "errors": {blocks.TEXT_BLOCK: text}})
        await ack(**(reply.body or {}))

    # -- lifecycle -------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        if self._verifier is None:
            return ()
        return [Route("/slack/events", self._events, methods=["POST"])]

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        if self._verifier is None and self._app_token is None and self._bolt is None:
            raise ConfigurationError(
                f"SlackChannel(channel={self.channel!r}) receives no clicks: pass signing_secret= (HTTP "
                "callbacks) or app_token= (Socket Mode), or attach() it to your slack-bolt app first"
            )
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        session = aiohttp.ClientSession(connector=_dns.connector(), timeout=timeout)
        self._session, self._decider = session, decider
        self._web = AsyncWebClient(
            token=self._bot_token, base_url=self.base_url, session=session, retry_handlers=[]
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._app_token is not None:
                    await stack.enter_async_context(self._socket_mode(session, self._app_token))
                async with anyio.create_task_group() as tasks:
                    self._tasks = tasks
                    task_status.started()
                    try:
                        await anyio.sleep_forever()
                    finally:
                        self._tasks = None
        finally:
            self._web = self._session = None
            with anyio.CancelScope(shield=True):
                await session.close()

    @contextlib.asynccontextmanager
    async def _socket_mode(self, session: aiohttp.ClientSession, app_token: str) -> AsyncIterator[None]:
        """A connected Socket Mode client, closed (its own tasks ended) on the way out."""
        web = AsyncWebClient(base_url=self.base_url, session=session, retry_handlers=[])
        client = SocketModeClient(app_token, web_client=web, auto_reconnect_enabled=True)
        # The WebSocket's own session would resolve host names in the default executor.
        await client.aiohttp_client_session.close()
        client.aiohttp_client_session = aiohttp.ClientSession(connector=_dns.connector())
        try:
            client.socket_mode_request_listeners.append(self._on_envelope)
            try:
                with anyio.fail_after(_CONNECT_TIMEOUT):
                    client.wss_uri = await client.issue_new_wss_url()
                    await client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
            except SlackApiError as exc:
                raise ChannelError(
                    f"Slack Socket Mode could not connect: {exc.response.get('error')}"
                ) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ChannelError(f"Slack Socket Mode could not connect: {type(exc).__name__}") from exc
            logger.info("slack.socket_mode_connected")
            yield
        finally:
            with anyio.move_on_after(_CONNECT_TIMEOUT, shield=True):
                await client.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
                own = [client.message_processor, client.current_session_monitor, client.message_receiver]
                await asyncio.wait([task for task in own if task is not None])  # close() only cancels them

    # -- out -------------------------------------------------------------------------

    async def send(self, request: ApprovalRequest) -> str | None:
        """Post the request; its reference is ``channel:ts``, with ``:thread_ts`` in a thread."""
        web = self._running()
        approvers = self._allowed(request)
        mentions = (
            [m for m in [await self._people.mention(a) for a in approvers] if m]
            if self.mention_approvers
            else []
        )
        message = blocks.request_message(
            request,
            approvers,
            modals=self.channel is not None,
            mentions=mentions,
            grants=self.grant_durations,
        )
        deadline = time.monotonic() + (request.expires_at - datetime.now(UTC)).total_seconds()
        if self._webhook_url is not None:
            async with self._send_lock:  # one at a time: a 429 then holds the queue, not a herd
                await self._retrying(
                    "webhook", functools.partial(self._post, self._webhook_url, message), deadline
                )
            return None
        where = self._where.get() or _Where(None, None)
        target = where.channel or self.channel
        assert target is not None
        channel = await self._people.destination(target)
        async with self._send_lock:
            post = functools.partial(
                web.chat_postMessage, channel=channel, thread_ts=where.thread_ts, **message
            )
            response = await self._retrying("chat.postMessage", post, deadline)
        ref = f"{response['channel']}:{response['ts']}"
        return ref if where.thread_ts is None else f"{ref}:{where.thread_ts}"

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        """A reply under the request's message (in its conversation's thread, when it is in
        one) that mentions its approvers, so that Slack notifies them again."""
        if self._webhook_url is not None or ref is None:
            return  # an incoming webhook posts to its channel only: no thread to remind in
        web = self._running()
        channel, ts, *thread = ref.split(":")
        mentions = [m for m in [await self._people.mention(a) for a in self._allowed(request)] if m]
        text = blocks.reminder(request, mentions)
        post = functools.partial(
            web.chat_postMessage, channel=channel, thread_ts=thread[0] if thread else ts, text=text
        )
        await self._retrying("chat.postMessage", post, time.monotonic() + _UPDATE_WINDOW)

    async def progress(self, request: ApprovalRequest, ref: str | None) -> None:
        """A vote counted on a request that needs several: its message shows the count."""
        if self._webhook_url is not None or ref is None:
            return  # an incoming webhook's message changes only through a click's response_url
        web = self._running()
        channel, ts, *_ = ref.split(":")
        async with self._update_slots:
            shown = blocks.request_message(
                request, self._allowed(request), modals=True, grants=self.grant_durations
            )
            update = functools.partial(web.chat_update, channel=channel, ts=ts, **shown)
            await self._retrying("chat.update", update, time.monotonic() + _UPDATE_WINDOW)

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        web = self._running()
        granted = self._granted(request)
        response_url = None
        if self._webhook_url is not None or ref is None:
            response_url = self._response_urls.pop(request.id, None)
            if response_url is None:
                # An incoming webhook's message can only be replaced through a click's response_url.
                logger.info("slack.update_skipped", request_id=request.id, reason="no click on it yet")
                return
        async with self._update_slots:  # a few at a time: a burst of decisions trickles out
            message = blocks.outcome_message(request, granted=granted)
            deadline = time.monotonic() + _UPDATE_WINDOW
            if response_url is not None:
                replace = {"replace_original": True, **message}
                await self._retrying(
                    "response_url", functools.partial(self._post, response_url, replace), deadline
                )
            else:
                assert ref is not None
                channel, ts, *thread = ref.split(":")
                update = functools.partial(web.chat_update, channel=channel, ts=ts, **message)
                await self._retrying("chat.update", update, deadline)
                if thread:  # and the outcome in the conversation, where the agent's people read it
                    text = {"text": message["text"]}
                    post = functools.partial(
                        web.chat_postMessage, channel=channel, thread_ts=thread[0], **text
                    )
                    await self._retrying("chat.postMessage", post, deadline)

    def _granted(self, request: ApprovalRequest) -> float | None:
        """The seconds a grant given with the request's one approval allows the same call for,
        when that approval was a click here on "Approve, and allow the same"."""
        decision = request.decision
        if decision is None or decision.by is None:
            return None
        asked = self._asked.pop((request.id, decision.by), None)
        if (
            asked is None
            or not decision.approved
            or decision.via != self.name
            or decision.decided_at < asked.at
        ):
            return None
        return asked.seconds

    def _running(self) -> AsyncWebClient:
        if self._web is None:
            raise ChannelError("SlackChannel is not running: start the HumanLayer first (async with hl)")
        return self._web

    async def _api(self, method: str, **params: Any) -> Mapping[str, Any]:
        """One Web API call by name (``users.info``...), retried as the others; its JSON answer.

        Slack's "no" (``{"ok": false}``: no such user, group or email) is an answer, returned
        as it is; a missing scope, an outage or a rate limit that outlasts the retries raises
        ``ChannelError``. Retried for at most ``_LOOKUP_WINDOW``: a click waits for it, and
        Slack wants its acknowledgement within three seconds.
        """
        call = getattr(self._running(), method.replace(".", "_"))

        async def answer() -> Mapping[str, Any]:
            try:
                response = await call(**params)
            except SlackApiError as exc:
                refused = exc.response
                if refused.status_code != 200 or refused.get("error") == "missing_scope":
                    raise
                response = refused
            return response.data if isinstance(response.data, dict) else {}

        try:
            with anyio.fail_after(_LOOKUP_WINDOW):
                return await self._retrying(method, answer, time.monotonic() + _LOOKUP_WINDOW)
        except TimeoutError:
            raise ChannelError(f"Slack {method} took longer than {_LOOKUP_WINDOW:g} s") from None

    async def _post(self, url: str, payload: Mapping[str, Any]) -> None:
        """POST JSON to a webhook or ``response_url``; anything but 200 raises ``_HTTPStatus``."""
        assert self._session is not None
        async with self._session.post(url, json=payload) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                raise _HTTPStatus(response.status, response.headers.get("Retry-After"), text)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """``call()``, retried with backoff on 5xx and network errors, after Retry-After on 429.

        Anything else Slack refuses, or a failure that outlasts the retries or ``deadline``
        (a ``time.monotonic()`` value), is a ``ChannelError`` naming Slack's error.
        """
        backoff = Backoff(_BACKOFF, _BACKOFF_CAP, retries=_ATTEMPTS - 1)
        while True:
            try:
                return await call()
            except SlackApiError as exc:
                response = exc.response
                error = str(response.get("error") or f"HTTP {response.status_code}")
                if error == "missing_scope":  # the app's settings, not a moment's trouble: say which
                    error = f"missing_scope: the Slack app needs the {response.get('needed')} scope"
                failure = _Failure(response.status_code, response.headers.get("Retry-After"), error)
                cause: Exception = exc
            except _HTTPStatus as exc:
                failure, cause = exc.failure, exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure, cause = _Failure(None, None, type(exc).__name__), exc
            wait: float | None
            if failure.status == 429:  # rate limited: as long as Slack says, not counted as a failure
                wait = _retry_after(failure.retry_after)
            elif failure.status is None or failure.status >= 500:
                wait = backoff.next()
                if wait is None:
                    raise ChannelError(
                        f"Slack {what} failed {backoff.retries_made + 1} times: {failure.error}"
                    ) from cause
            else:
                raise ChannelError(f"Slack {what} failed: {failure.error}") from cause
            if time.monotonic() + wait > deadline:
                raise ChannelError(f"Slack {what} failed: {failure.error}, and time ran out") from cause
            logger.warning("slack.retry", call=what, error=failure.error, wait=round(wait, 3))
            await anyio.sleep(wait)

    def _later(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        """Run an outbound call after the callback is acknowledged, in the channel's task group."""

        async def guarded() -> None:
            try:
                await self._retrying(what, call, time.monotonic() + _UPDATE_WINDOW)
            except Exception as exc:  # logged, never fatal to the channel's other work
                logger.warning("slack.call_failed", call=what, error=str(exc) or repr(exc))

        if self._tasks is not None:
            self._tasks.start_soon(guarded)

    def _tell(self, click: _Click, text: blocks.Mrkdwn, web: AsyncWebClient | None) -> None:
        """An ephemeral message to whoever clicked, in the thread they clicked in."""
        if self._webhook_url is None and web is not None:
            channel = click.channel or self.channel
            assert channel is not None
            post = functools.partial(
                web.chat_postEphemeral, channel=channel, user=click.user, text=text, thread_ts=click.thread_ts
            )
            self._later("chat.postEphemeral", post)
        elif click.response_url:
            payload = {"response_type": "ephemeral", "replace_original": False, "text": text}
            self._later("response_url", functools.partial(self._post, click.response_url, payload))

    # -- in --------------------------------------------------------------------------

    async def _events(self, request: Request) -> Response:
        """``POST /slack/events``: Slack's interactivity request URL.

        What it does not act on raises ``Refused``, which the listener answers and logs.
        """
        try:
            body = (await request.body()).decode()
        except UnicodeDecodeError:
            raise Refused(400, "the body is not UTF-8", body="bad request: not a Slack payload") from None
        problem = self._unverified(request.headers, body)
        if problem is not None:
            raise Refused(401, problem, body="invalid Slack signature")
        reply = await self._handle(_form_payload(body), self._web)
        return reply.response()

    def _unverified(self, headers: Mapping[str, str], body: str) -> str | None:
        """Why the request is not signed by Slack (``None``: it is)."""
        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        if not timestamp or not signature:
            return "missing signature"
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return "bad timestamp"
        if abs(time.time() - int(timestamp)) > _MAX_SKEW:
            return "stale timestamp"
        assert self._verifier is not None
        return None if self._verifier.is_valid(body, timestamp, signature) else "bad signature"

    async def _on_envelope(self, client: AsyncBaseSocketModeClient, envelope: SocketModeRequest) -> None:
        # Called in a task of slack_sdk's own: hand the envelope over to ours at once.
        if self._tasks is None:  # starting or stopping: unacknowledged, Slack tells the user
            Refused(503, "not running").log(via="socket mode")
            return
        self._tasks.start_soon(self._answer_envelope, client, envelope)

    async def _answer_envelope(self, client: AsyncBaseSocketModeClient, envelope: SocketModeRequest) -> None:
        """Handle one Socket Mode envelope, then acknowledge it (the decision stored first)."""
        reply = _Reply()
        try:
            if envelope.type != "interactive":
                raise _BadPayload(f"envelope type {envelope.type!r}")
            reply = await self._handle(envelope.payload, self._web)
        except Refused as refused:  # acknowledged all the same: sent again, it is refused again
            refused.log(via="socket mode")
        except Exception as exc:  # no acknowledgement: Slack sends the envelope again
            logger.error("slack.envelope_failed", error=repr(exc))
            return
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope.envelope_id, reply.body))
        except Exception as exc:
            logger.warning("slack.ack_failed", error=repr(exc))

    async def _handle(self, payload: Mapping[str, Any], web: AsyncWebClient | None) -> _Reply:
        """Turn one interaction payload into a decision (or a reason why not).

        Whatever it came through (``/slack/events``, Socket Mode, a Bolt app); ``web`` is
        the client that opens modals and tells whoever clicked.
        """
        if self._decider is None:
            raise Refused(503, "not running")
        kind = payload.get("type")
        if kind == "block_actions":
            return await self._on_click(_parse_click(payload), web)
        if kind == "view_submission":
            return await self._on_submission(_parse_submission(payload))
        raise _BadPayload(f"payload type {kind!r}")

    async def _undecided(self, request_id: str) -> ApprovalRequest | _Reply:
        """The request if it is still pending; otherwise the reply to give (or ``Refused``)."""
        assert self._decider is not None
        try:
            request = await self._decider.get(request_id)
        except UnknownRequest:
            raise _unknown(request_id) from None
        if request.decision is not None:
            return self._already(request.decision)
        return request

    async def _pending(self, request_id: str, user: str) -> tuple[ApprovalRequest, Principal] | _Reply:
        """The request and who ``user`` is, if they may still decide it; otherwise the reply to give.

        They must be on this channel's list and on the request's (either one may be empty).
        """
        request = await self._undecided(request_id)
        if isinstance(request, _Reply):
            return request
        try:
            who = await self._people.principal(
                user, (*request.approvers, *self.approvers), requester=request.requested_by
            )
        except ChannelError as exc:  # fail closed: nothing is decided by someone we cannot name
            logger.warning("slack.who_unknown", request_id=request_id, user=user, error=str(exc))
            return _Reply(
                blocks.markup(
                    "Slack could not say who you are, so nothing was decided: {}", blocks.escape(str(exc))
                )
            )
        if (self.approvers and not who.matches(self.approvers)) or not request.may_decide(who):
            yours = request.is_requester(who)
            logger.warning(
                "slack.not_an_approver", request_id=request_id, user=user, by=who.id, requester=yours
            )
            return _Reply(YOUR_OWN if yours else NOT_AN_APPROVER)
        return request, who

    def _allowed(self, request: ApprovalRequest) -> tuple[str, ...]:
        """Who the message names as approvers: those on both lists, when both name people."""
        if not (request.approvers and self.approvers):
            return request.approvers or self.approvers
        ours = {same_name(approver) for approver in self.approvers}
        return tuple(a for a in request.approvers if same_name(a) in ours) or request.approvers

    def _already(self, decision: Decision) -> _Reply:
        logger.info("slack.already_decided", request_id=decision.request_id, status=decision.status.value)
        return _Reply(blocks.markup("This request was already {}.", blocks.slack_describe(decision)))

    async def _on_click(self, click: _Click, web: AsyncWebClient | None) -> _Reply:
        reply = await self._click(click, web)
        if reply.text:
            self._tell(click, reply.text, web)
        return reply

    async def _click(self, click: _Click, web: AsyncWebClient | None) -> _Reply:
        if click.action == blocks.FULL:  # anyone may look: looking decides nothing
            return await self._show_full_call(click, web)
        seconds = None if click.seconds is None else self._offered(click.seconds)
        if click.seconds is not None and seconds is None:
            logger.warning(
                "slack.grant_not_offered", request_id=click.request_id, user=click.user, seconds=click.seconds
            )
            return _Reply(NOT_OFFERED)
        found = await self._pending(click.request_id, click.user)
        if isinstance(found, _Reply):
            return found
        (request, who), modals = found, self._webhook_url is None
        if click.action not in _ACTIONS[request.kind]:
            raise _BadPayload(f"action {click.action!r} on a {request.kind}")
        if click.action in (blocks.APPROVE, *blocks.GRANTS) and not blocks.approvable(request):
            logger.warning("slack.shortened", request_id=request.id, user=click.user)
            return _Reply(SHORTENED)
        if click.action == blocks.EDIT:
            return self._open_edit(request, click, web)
        if modals and click.action in (blocks.DENY, blocks.ANSWER):
            view = blocks.deny_view(request) if click.action == blocks.DENY else blocks.full_view(request)
            return self._open(click, view, web)
        if click.response_url and not modals:
            self._response_urls[request.id] = click.response_url
        if click.action == blocks.ANSWER_INLINE:
            if not click.text:
                return _Reply(blocks.markup("type an answer first"))
            return await self._decide(request, who, True, answer=click.text)
        if click.action == blocks.ANSWER:
            raise _BadPayload("an Answer button in webhook mode")
        if seconds is not None:
            return await self._grant(request, who, seconds, click.seen)
        return await self._decide(request, who, click.action == blocks.APPROVE, seen=click.seen)

    def _offered(self, text: str) -> float | None:
        """The seconds a grant button's value names, if they are one of the durations offered."""
        try:
            seconds = float(text)
        except ValueError:
            return None
        return seconds if seconds in self.grant_durations else None

    async def _grant(
        self, request: ApprovalRequest, who: Principal, seconds: float, seen: str | None
    ) -> _Reply:
        """Approve, and allow the same call for ``seconds``: the updated message says until when.

        With several approvals each vote carries it, and the message reads it in the votes;
        with one, the update reads it here (a grant given elsewhere in a fleet is not shown).
        """
        if request.tool is None:
            raise _BadPayload("a grant on a request that names no tool")
        if request.approvals > 1:
            return await self._decide(request, who, True, grant=seconds, seen=seen)
        now = datetime.now(UTC)
        self._asked = {key: a for key, a in self._asked.items() if now - a.at < _ASKED_KEPT}
        key = (request.id, who.id)
        self._asked[key] = _Asked(seconds, now)
        try:
            reply = await self._decide(request, who, True, grant=seconds, seen=seen)
        except BaseException:
            self._asked.pop(key, None)
            raise
        if reply.text:  # not this approval's decision: no grant
            self._asked.pop(key, None)
        return reply

    async def _show_full_call(self, click: _Click, web: AsyncWebClient | None) -> _Reply:
        """The "Show the full call" button: the whole call in a modal, which approves it."""
        if self._webhook_url is not None:
            raise _BadPayload("Show the full call through an incoming webhook, which opens no modals")
        found = await self._undecided(click.request_id)
        if isinstance(found, _Reply):
            return found
        if found.kind != "approval":
            raise _BadPayload(f"Show the full call on a {found.kind}")
        view = blocks.full_view(found)
        reply = self._open(click, view, web)
        if view is not None:
            logger.info("slack.full_call_shown", request_id=found.id, user=click.user)
        return reply

    def _open_edit(self, request: ApprovalRequest, click: _Click, web: AsyncWebClient | None) -> _Reply:
        """The Edit button: the editable arguments in a modal that approves with what changed."""
        if self._webhook_url is not None:
            raise _BadPayload("Edit through an incoming webhook, which opens no modals")
        if not request.takes_edits:
            raise _BadPayload("Edit on a request that takes no edits")
        view = blocks.edit_view(request)
        if view is None:
            logger.warning("slack.not_editable", request_id=request.id, user=click.user)
            return _Reply(NOT_EDITABLE)
        return self._open(click, view, web)

    def _open(self, click: _Click, view: dict[str, Any] | None, web: AsyncWebClient | None) -> _Reply:
        """Open ``view`` for whoever clicked (``None``: a request too large to show in Slack)."""
        if not click.trigger_id:
            raise _BadPayload("a click without trigger_id")
        if view is None:
            logger.warning("slack.too_large", request_id=click.request_id)
            return _Reply(TOO_LARGE)
        assert web is not None
        self._later("views.open", functools.partial(web.views_open, trigger_id=click.trigger_id, view=view))
        return _Reply()

    async def _on_submission(self, submission: _Submission) -> _Reply:
        found = await self._pending(submission.request_id, submission.user)
        if isinstance(found, _Reply):
            reply = found
        else:
            request, who = found
            if submission.view == blocks.DENY_VIEW and request.kind == "approval":
                reply = await self._decide(request, who, False, comment=submission.text, seen=submission.seen)
            elif submission.view == blocks.FULL_VIEW and request.kind == "approval":
                reply = await self._decide(request, who, True, comment=submission.text, seen=submission.seen)
            elif submission.view == blocks.EDIT_VIEW and request.kind == "approval":
                edits = _changed(request, submission.boxes or {})
                reply = await self._decide(
                    request, who, True, comment=submission.text, edits=edits, seen=submission.seen
                )
            elif submission.view == blocks.ANSWER_VIEW and request.kind == "question" and submission.text:
                reply = await self._decide(request, who, True, answer=submission.text)
            else:
                raise _BadPayload(f"view {submission.view!r} on a {request.kind}")
        if reply.counted:  # the modal says so, and closes
            return _Reply(body={"response_action": "update", "view": blocks.notice_view(reply.text)})
        if reply.text:  # shown under the text box (or the argument's); the modal stays open
            return _Reply(body={"response_action": "errors", "errors": {reply.under: reply.text}})
        return reply

    async def _decide(
        self,
        request: ApprovalRequest,
        who: Principal,
        approved: bool,
        *,
        comment: str | None = None,
        answer: str | None = None,
        edits: Mapping[str, Any] | None = None,
        grant: float | None = None,
        seen: str | None = None,
    ) -> _Reply:
        """Store the decision before the callback is acknowledged; say who won if not us.

        A vote that leaves the request waiting for more approvals is confirmed to whoever
        cast it (the message shows the count once the waiting process has it: ``progress``),
        and, when it asks for a grant (``grant`` seconds), that the grant needs every approver
        to ask for it. An edit that may not be made is said under its argument's box.
        """
        assert self._decider is not None
        try:
            if answer is not None:
                answered = await self._decider.respond(request.id, answer, by=who, via=self.name)
            else:
                # A Decider from before edits and grants still works.
                extra: dict[str, Any] = {} if edits is None else {"edits": edits}
                if grant is not None:
                    extra["grant"] = grant
                if seen is not None:
                    extra["seen"] = seen
                answered = await self._decider.decide(
                    request.id, approved, by=who, comment=comment or None, via=self.name, **extra
                )
        except NotAnApprover as refusal:
            return _Reply(YOUR_OWN if refusal.requester else NOT_AN_APPROVER)
        except ArgumentsEdited:
            logger.info("slack.edited_since_shown", request_id=request.id, by=who.id)
            return _Reply(EDITED_SINCE)
        except InvalidEdit as refusal:
            logger.info("slack.invalid_edit", request_id=request.id, argument=refusal.argument, by=who.id)
            under = blocks.EDIT_BLOCK + refusal.argument if refusal.argument else blocks.TEXT_BLOCK
            return _Reply(blocks.fitted(refusal.problem, 500), under=under)
        except UnknownRequest:
            raise _unknown(request.id) from None
        if answered.decision is None:  # a vote: the request waits for more
            progress = blocks.escape(describe_votes(answered.votes, answered.needed))
            if grant is None:
                return _Reply(blocks.markup("Your approval is counted: {}", progress), counted=True)
            how_long = blocks.escape(describe_duration(grant))
            text = blocks.markup(
                "Your approval is counted: {}. The same calls are allowed for {} only when every "
                "approver asks for it.",
                progress,
                how_long,
            )
            return _Reply(text, counted=True)
        if not answered.stands:  # someone decided first (or it expired): say who
            return self._already(answered.decision)
        return _Reply()


_ACTIONS = {
    "approval": (blocks.APPROVE, *blocks.GRANTS, blocks.DENY, blocks.EDIT),
    "question": (blocks.ANSWER, blocks.ANSWER_INLINE),
}


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header; one second when absent, odd or over an hour."""
    seconds = retry_after(value)
    return seconds if seconds is not None and seconds < 3600 else 1.0


def _form_payload(body: str) -> dict[str, Any]:
    """The JSON ``payload`` field of a form-encoded interactivity request."""
    try:
        fields = parse_qs(body, max_num_fields=20, strict_parsing=True)
        payload = json.loads(fields["payload"][0])
    except (ValueError, KeyError) as exc:
        raise _BadPayload("not a Slack interactivity payload") from exc
    if not isinstance(payload, dict):
        raise _BadPayload("the payload is not a JSON object")
    return payload


def _text(data: Any, *path: str) -> str:
    value = dig(data, *path)
    if not isinstance(value, str) or not value:
        raise _BadPayload(f"no {'.'.join(path)}")
    return value


def _optional(data: Any, *path: str) -> str | None:
    value = dig(data, *path)
    return value if isinstance(value, str) and value else None


def _request_id(text: str) -> str:
    """``text`` if it can be a request id: no store is asked about anything else."""
    if not _REQUEST_ID.fullmatch(text):
        raise _BadPayload("malformed request id")
    return text


def _with_fingerprint(value: str) -> tuple[str, str | None]:
    """A button value or a modal's metadata: the request id, and the fingerprint of the call as
    shown (``None`` in messages sent before fingerprints: their answers are not checked)."""
    request_id, _, fingerprint = value.partition(" ")
    return request_id, _fingerprint(fingerprint)


def _fingerprint(text: str) -> str | None:
    if not text:
        return None
    if not _FINGERPRINT.fullmatch(text):
        raise _BadPayload("malformed fingerprint")
    return text


def _parse_click(payload: Mapping[str, Any]) -> _Click:
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise _BadPayload("no actions")
    action = actions[0]
    action_id = _text(action, "action_id")
    seconds = seen = None
    if action_id == blocks.ANSWER_INLINE:
        request_id, typed = _text(action, "block_id"), _optional(action, "value")
    elif action_id in (blocks.APPROVE, blocks.DENY, blocks.ANSWER, blocks.FULL, blocks.EDIT):
        (request_id, seen), typed = _with_fingerprint(_text(action, "value")), None
    elif action_id in blocks.GRANTS:
        request_id, space, asked = _text(action, "value").partition(" ")
        if not space:
            raise _BadPayload("malformed grant value")
        asked, _, fingerprint = asked.partition(" ")
        typed, seconds, seen = None, asked[:40], _fingerprint(fingerprint)
    else:
        raise _BadPayload(f"action {action_id!r}")
    return _Click(
        action=action_id,
        request_id=_request_id(request_id),
        user=_text(payload, "user", "id"),
        text=typed,
        trigger_id=_optional(payload, "trigger_id"),
        channel=_optional(payload, "container", "channel_id") or _optional(payload, "channel", "id"),
        response_url=_optional(payload, "response_url"),
        thread_ts=_optional(payload, "container", "thread_ts"),
        seconds=seconds,
        seen=seen,
    )


def _parse_submission(payload: Mapping[str, Any]) -> _Submission:
    view = payload.get("view")
    callback_id, metadata = _text(view, "callback_id"), _text(view, "private_metadata")
    boxes = _edit_boxes(dig(view, "state", "values")) if callback_id == blocks.EDIT_VIEW else None
    request_id, seen = _with_fingerprint(metadata)
    return _Submission(
        view=callback_id,
        request_id=_request_id(request_id),
        user=_text(payload, "user", "id"),
        text=_optional(view, "state", "values", blocks.TEXT_BLOCK, blocks.TEXT_ACTION, "value"),
        boxes=boxes,
        seen=seen,
    )


def _edit_boxes(values: Any) -> dict[str, str]:
    """The edit modal's boxes in its ``state.values``: argument name → the text in its box.

    An emptied box (Slack sends ``null``) is the empty text.
    """
    boxes: dict[str, str] = {}
    for block_id, inputs in values.items() if isinstance(values, Mapping) else ():
        if not (isinstance(block_id, str) and block_id.startswith(blocks.EDIT_BLOCK)):
            continue
        name, typed = block_id.removeprefix(blocks.EDIT_BLOCK), dig(inputs, blocks.EDIT_INPUT, "value")
        if not name or not (typed is None or isinstance(typed, str)):
            raise _BadPayload(f"malformed edit box {block_id[:100]!r}")
        boxes[name] = typed or ""
    return boxes


def _changed(request: ApprovalRequest, boxes: Mapping[str, str]) -> dict[str, Any] | None:
    """The edits of the boxes that hold another value than the argument's, as its type wants
    them (``None``: nothing changed, an approval as asked)."""
    schemas = request.editable or {}
    edits: dict[str, Any] = {}
    for name, typed in boxes.items():
        schema = schemas.get(name)
        if name in request.kwargs and typed == edit_text(request.kwargs[name], schema):
            continue  # the box as it opened
        value = parse_edit(typed, schema)
        if name in request.kwargs and _same(value, request.kwargs[name]):
            continue  # written otherwise (spaces, another JSON form), the same value
        edits[name] = value
    return edits or None


def _same(value: Any, other: Any) -> bool:
    """Whether two values have the same JSON, type for type (``1`` is neither ``1.0`` nor ``true``)."""
    try:
        return json.dumps(value, sort_keys=True) == json.dumps(other, sort_keys=True)
    except (TypeError, ValueError):  # no JSON form: not an argument value a box left as it was
        return False
