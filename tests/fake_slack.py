"""A local fake of Slack's servers, on loopback, speaking Slack's wire formats.

- Web API methods under ``/api/`` (``chat.postMessage`` with threads, ``chat.update``,
  ``views.open``, ``chat.postEphemeral``, ``auth.test``, ``apps.connections.open``,
  ``users.info``, ``users.lookupByEmail``, ``usergroups.users.list``,
  ``conversations.open``): bearer-token auth, JSON or form bodies, ``{"ok": true, ...}`` /
  ``{"ok": false, "error": ...}`` answers.
- A workspace: ``users`` (user id → email, or ``None`` for a user without one),
  ``groups`` (user group id → member ids), and the app's granted ``scopes`` (``None``:
  every scope). A method whose scope is not granted answers ``missing_scope`` with the
  ``needed`` scope, as Slack does; ``users.info`` shows the email only with
  ``users:read.email``.
- An incoming webhook (``webhook_url``) and ``response_url`` endpoints (``response_url(name)``).
- A per-channel rate limit on posting (``min_interval`` seconds between messages), answered
  with 429, ``Retry-After`` and ``ratelimited`` as Slack does; ``fail(method, status)``
  makes the next calls fail with a 5xx or a Slack error.
- Socket Mode: ``apps.connections.open`` returns a ``ws://`` URL of this server, which
  says ``hello`` and relays envelopes (``send_envelope``) and their acknowledgements.
- Block Kit's documented limits, enforced as Slack does: a message (posted, updated,
  through a webhook or a ``response_url``) with more than 50 blocks, a modal with more
  than 100, or a text, field, button or title over its length is refused with
  ``invalid_blocks`` (``invalid_arguments`` for ``views.open``) and the JSON pointers of
  what broke the limit; a notification ``text`` over 40,000 characters is ``msg_too_long``.

Everything received is recorded in ``calls``; ``wait_for`` waits for a condition on it.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl

import anyio
from aiohttp import WSMsgType, web

T = TypeVar("T")

BOT_TOKEN = "xoxb-fake-bot-token-0123456789"
APP_TOKEN = "xapp-1-A0TEST-fake-app-token"
WEBHOOK_PATH = "/services/T0TEST/B0TEST/fakeWebhookSecret"
SCOPES = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "users.info": "users:read",
    "users.lookupByEmail": "users:read.email",
    "usergroups.users.list": "usergroups:read",
    "conversations.open": "im:write",
}
"""The scope each Web API method needs (the fake's methods that need one)."""
PATIENCE = 30.0  # seconds before a wait gives up


@dataclass
class Call:
    """One request the fake received, and its status code."""

    method: str  # a Web API method, "webhook", or "response_url"
    data: dict[str, Any]
    status: int = 200
    path: str = ""
    answer: dict[str, Any] | None = None  # the Web API's JSON answer
    at: float = field(default_factory=time.monotonic)


class FakeSlack:
    """Slack's servers for tests; ``async with FakeSlack() as slack:`` serves on a free port."""

    def __init__(self, *, min_interval: float | None = None) -> None:
        self.min_interval = min_interval
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[str, str | None] = {}
        self.groups: dict[str, list[str]] = {}
        self.scopes: set[str] | None = None
        self.dms: dict[str, str] = {}  # user id → the id of the app's DM channel with them
        self.acks: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, deque[tuple[int, str]]] = {}
        self._last_post: dict[str, float] = {}
        self._ts = itertools.count(1)
        self._changed = anyio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk reads users and groups with GET
        app.router.add_post(WEBHOOK_PATH, self._webhook)
        app.router.add_post("/actions/{name}", self._response_url)
        app.router.add_get("/socket-mode", self._socket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in list(self._sockets):
            await socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    # -- what tests use -------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    def response_url(self, name: str) -> str:
        return f"{self.url}/actions/{name}"

    def received(self, method: str, status: int | None = 200) -> list[Call]:
        """The calls of ``method`` (answered with ``status``; ``None``: any)."""
        return [c for c in self.calls if c.method == method and (status is None or c.status == status)]

    def fail(self, method: str, status: int = 500, *, error: str = "internal_error", times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``status`` and ``error``."""
        self._failures.setdefault(method, deque()).extend([(status, error)] * times)

    async def wait_for(self, condition: Callable[[], T | None]) -> T:
        """``condition()`` once it is truthy, re-checked whenever a call arrives.

        Fails after ``PATIENCE`` seconds, so a test that would hang fails instead.
        """
        with anyio.fail_after(PATIENCE):
            while not (result := condition()):
                await self._changed.wait()
        return result

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The replies posted in the thread of message ``thread_ts`` in ``channel``, in order."""
        return [
            message
            for (where, _), message in self.messages.items()
            if where == channel and message.get("thread_ts") == thread_ts
        ]

    async def wait_calls(self, method: str, count: int = 1, *, status: int | None = 200) -> list[Call]:
        """The calls of ``method`` answered with ``status``, once there are ``count`` of them."""
        return await self.wait_for(lambda: (calls := self.received(method, status))[count - 1 :] and calls)

    @property
    def sockets(self) -> int:
        """Open Socket Mode connections."""
        return len(self._sockets)

    async def send_envelope(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send an ``interactive`` envelope to the connected app; return its acknowledgement."""
        envelope_id = str(uuid.uuid4())
        await self.wait_for(lambda: self._sockets)
        await self._sockets[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": "interactive",
                "accepts_response_payload": True,
                "payload": payload,
            }
        )
        return await self.wait_for(lambda: self.acks.get(envelope_id))

    # -- the servers ----------------------------------------------------------------

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = anyio.Event()

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        data = await _body(request)
        call = Call(method, data, path=request.path)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return self._answer(call, {"ok": False, "error": "invalid_auth"})
        failures = self._failures.get(method)
        if failures:
            status, error = failures.popleft()
            return self._answer(call, {"ok": False, "error": error}, status)
        needed = SCOPES.get(method)
        if needed is not None and self.scopes is not None and needed not in self.scopes:
            provided = ",".join(sorted(self.scopes))
            return self._answer(
                call, {"ok": False, "error": "missing_scope", "needed": needed, "provided": provided}
            )
        problem = _invalid(method, data)
        if problem is not None:
            return self._answer(call, problem)
        if method in ("users.info", "users.lookupByEmail", "usergroups.users.list", "conversations.open"):
            return self._answer(call, self._workspace(method, data))
        if method == "chat.postMessage":
            return self._post_message(call)
        if method == "chat.update":
            key = (str(data.get("channel")), str(data.get("ts")))
            if key not in self.messages:
                return self._answer(call, {"ok": False, "error": "message_not_found"})
            self.messages[key] = {
                **self.messages[key],
                "text": data.get("text"),
                "blocks": data.get("blocks"),
            }
            return self._answer(call, {"ok": True, "channel": key[0], "ts": key[1]})
        if method == "views.open":
            if not data.get("trigger_id") or not isinstance(data.get("view"), dict):
                return self._answer(call, {"ok": False, "error": "invalid_arguments"})
            return self._answer(call, {"ok": True, "view": {"id": f"V{next(self._ts):08d}", **data["view"]}})
        if method == "chat.postEphemeral":
            if not (data.get("channel") and data.get("user") and data.get("text")):
                return self._answer(call, {"ok": False, "error": "invalid_arguments"})
            return self._answer(call, {"ok": True, "message_ts": self._next_ts()})
        if method == "auth.test":
            return self._answer(call, {"ok": True, "user_id": "U0BOT", "team_id": "T0TEST", "bot_id": "B0"})
        if method == "apps.connections.open":
            ws_url = self.url.replace("http://", "ws://") + "/socket-mode"
            return self._answer(call, {"ok": True, "url": ws_url})
        return self._answer(call, {"ok": False, "error": "unknown_method"})

    def _workspace(self, method: str, data: dict[str, Any]) -> dict[str, Any]:
        """The answer of a method that reads the workspace's people."""
        if method == "users.info":
            user = str(data.get("user") or "")
            if user not in self.users:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": self._user(user)}
        if method == "users.lookupByEmail":
            email = str(data.get("email") or "")
            found = next((user for user, known in self.users.items() if known == email), None)
            return (
                {"ok": False, "error": "users_not_found"}
                if found is None
                else {"ok": True, "user": self._user(found)}
            )
        if method == "usergroups.users.list":
            group = str(data.get("usergroup") or "")
            if group not in self.groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.groups[group])}
        users = str(data.get("users") or "")
        if users not in self.users:
            return {"ok": False, "error": "user_not_found"}
        dm = self.dms.setdefault(users, f"D{len(self.dms) + 1:08d}")
        return {"ok": True, "channel": {"id": dm}}

    def _user(self, user: str) -> dict[str, Any]:
        profile: dict[str, Any] = {"real_name": f"User {user}"}
        email = self.users[user]
        if email is not None and (self.scopes is None or "users:read.email" in self.scopes):
            profile["email"] = email
        return {"id": user, "name": user.lower(), "profile": profile}

    def _post_message(self, call: Call) -> web.StreamResponse:
        channel = str(call.data.get("channel") or "")
        if not channel or not (call.data.get("text") or call.data.get("blocks")):
            return self._answer(call, {"ok": False, "error": "no_text" if channel else "channel_not_found"})
        limited = self._limited(channel, call)
        if limited is not None:
            return limited
        ts = self._next_ts()
        self.messages[(channel, ts)] = {
            "text": call.data.get("text"),
            "blocks": call.data.get("blocks"),
            "thread_ts": call.data.get("thread_ts"),
        }
        return self._answer(call, {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts}})

    def _limited(self, key: str, call: Call) -> web.StreamResponse | None:
        """429 with Retry-After when ``key`` posted less than ``min_interval`` ago."""
        now = time.monotonic()
        if self.min_interval is not None and key in self._last_post:
            remaining = self._last_post[key] + self.min_interval - now
            if remaining > 0:
                headers = {"Retry-After": str(math.ceil(remaining))}
                return self._answer(call, {"ok": False, "error": "ratelimited"}, 429, headers)
        self._last_post[key] = now
        return None

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        call = Call("webhook", await _body(request), path=request.path)
        failures = self._failures.get("webhook")
        if failures:
            status, error = failures.popleft()
            call.status = status
            self._record(call)
            return web.Response(status=status, text=error)
        limited = self._limited("webhook", call)
        if limited is not None:
            return limited
        return self._plain_answer(call)

    async def _response_url(self, request: web.Request) -> web.StreamResponse:
        return self._plain_answer(Call("response_url", await _body(request), path=request.path))

    def _plain_answer(self, call: Call) -> web.StreamResponse:
        """A webhook's or ``response_url``'s answer: ``ok``, or a 400 naming the problem."""
        refusal = _invalid(call.method, call.data)
        problem = "no_text" if not (call.data.get("text") or call.data.get("blocks")) else None
        problem = problem or (None if refusal is None else refusal["error"])
        call.status = 200 if problem is None else 400
        self._record(call)
        return web.Response(status=call.status, text=problem or "ok")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        self._record(Call("socket.connected", {}))
        try:
            await socket.send_json(
                {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0"}}
            )
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    ack = json.loads(message.data)
                    self.acks[ack["envelope_id"]] = ack
                    self._record(Call("socket.ack", ack))
        finally:
            self._sockets.remove(socket)
            self._record(Call("socket.closed", {}))
        return socket

    def _answer(
        self, call: Call, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
    ) -> web.StreamResponse:
        call.status, call.answer = status, body
        self._record(call)
        return web.json_response(body, status=status, headers=headers)

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON or form body (slack_sdk sends both), or query parameters."""
    raw = await request.read()
    if request.content_type == "application/json":
        data = json.loads(raw or b"{}")
        return data if isinstance(data, dict) else {"_": data}
    fields: dict[str, Any] = dict(parse_qsl(raw.decode()))
    fields.update(request.query)
    for key in ("blocks", "view"):
        if isinstance(fields.get(key), str):
            fields[key] = json.loads(fields[key])
    return fields


# -- Block Kit's limits ----------------------------------------------------------------------------

_TEXT_LIMITS = {"header": 150, "section": 3000, "context": 3000, "field": 2000, "button": 75, "label": 2000}
_VIEW_TEXT_LIMIT = 24  # a modal's title, submit and close


def _invalid(method: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """Slack's refusal of a message or view over Block Kit's limits; ``None`` when within them."""
    if method == "views.open":
        view = data.get("view")
        if not isinstance(view, dict):
            return None
        errors = [
            f"must be less than {_VIEW_TEXT_LIMIT + 1} characters [json-pointer:/view/{key}/text]"
            for key in ("title", "submit", "close")
            if len(_dig_text(view.get(key))) > _VIEW_TEXT_LIMIT
        ]
        if len(str(view.get("private_metadata", ""))) > 3000:
            errors.append("must be less than 3001 characters [json-pointer:/view/private_metadata]")
        errors += _block_errors(view.get("blocks"), 100, "/view/blocks")
        return _refusal("invalid_arguments", errors)
    if method not in ("chat.postMessage", "chat.update", "webhook", "response_url"):
        return None
    if len(str(data.get("text") or "")) > 40_000:
        return {"ok": False, "error": "msg_too_long"}
    return _refusal("invalid_blocks", _block_errors(data.get("blocks"), 50, "/blocks"))


def _refusal(error: str, errors: list[str]) -> dict[str, Any] | None:
    if not errors:
        return None
    return {"ok": False, "error": error, "errors": errors, "response_metadata": {"messages": errors}}


def _dig_text(element: Any) -> str:
    return str(element.get("text", "")) if isinstance(element, dict) else ""


def _block_errors(blocks: Any, most: int, where: str) -> list[str]:
    """What in ``blocks`` breaks Block Kit's limits, as Slack reports it."""
    if blocks is None:
        return []
    if not isinstance(blocks, list):
        return [f"must be an array [json-pointer:{where}]"]
    errors = [f"must be less than {most + 1} items [json-pointer:{where}]"] if len(blocks) > most else []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            errors.append(f"must be an object [json-pointer:{where}/{index}]")
            continue
        kind, path = block.get("type"), f"{where}/{index}"
        texts: list[tuple[str, Any, int]] = []
        if kind in ("header", "section") and "text" in block:
            texts.append((f"{path}/text", block["text"], _TEXT_LIMITS[kind]))
        fields = block.get("fields") or []
        if len(fields) > 10:
            errors.append(f"must be less than 11 items [json-pointer:{path}/fields]")
        texts += [(f"{path}/fields/{n}", field, _TEXT_LIMITS["field"]) for n, field in enumerate(fields)]
        elements = block.get("elements") or []
        if kind == "context":
            if len(elements) > 10:
                errors.append(f"must be less than 11 items [json-pointer:{path}/elements]")
            texts += [(f"{path}/elements/{n}", e, _TEXT_LIMITS["context"]) for n, e in enumerate(elements)]
        if kind == "actions":
            for n, element in enumerate(elements):
                texts.append((f"{path}/elements/{n}/text", element.get("text"), _TEXT_LIMITS["button"]))
                if len(str(element.get("value", ""))) > 2000:
                    errors.append(
                        f"must be less than 2001 characters [json-pointer:{path}/elements/{n}/value]"
                    )
        if kind == "input":
            texts.append((f"{path}/label", block.get("label"), _TEXT_LIMITS["label"]))
        for pointer, text, limit in texts:
            if not _dig_text(text):
                errors.append(f"must be more than 0 characters [json-pointer:{pointer}/text]")
            elif len(_dig_text(text)) > limit:
                errors.append(f"must be less than {limit + 1} characters [json-pointer:{pointer}/text]")
    return errors
