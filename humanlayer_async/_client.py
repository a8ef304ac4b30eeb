"""HumanLayer: configuration, lifecycle, and the decide/respond/cancel API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import secrets
import sys
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar, cast, overload

import anyio
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from ._audit import AuditEvent, logger, make_entry
from ._bridge import Bridge
from ._codec import digest, dumps
from ._exceptions import (
    AlreadyExecuted,
    ChannelError,
    ConfigurationError,
    HumanLayerError,
    NotAnApprover,
    OutcomeUnknown,
    StoreError,
    TooManyPending,
)
from ._gate import (
    Condition,
    ContextHook,
    Gated,
    GatedOrSentence,
    OnReject,
    RequestSpec,
    gate,
    refusal,
)
from ._models import ApprovalRequest, Decision, Execution, Kind, Status
from ._registry import CLOSED, EXPIRED, Outcome, Registry
from ._render import Render, mask_secrets
from .channels.base import Channel, Decider, ListenerAware
from .stores.base import DurableStore, Store, decision_entry, requested_entry
from .stores.memory import MemoryStore

if TYPE_CHECKING:  # the listener (starlette, uvicorn) is imported once it is built or served
    from starlette.applications import Starlette

    from .listener import IPNetwork, Listener

__all__ = ["HumanLayer"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_FOLLOW_RETRY = 0.5
"""Seconds before following a failed store again (doubling, up to 30)."""

_DRAIN_SECONDS = 10.0
"""How long ``aclose()`` lets channel updates and cancellations in flight finish."""


@dataclass(slots=True)
class _Run:
    """One agent run: its id, and how often each call was made in it (for re-attach keys)."""

    run_id: str
    calls: Counter[str] = field(default_factory=Counter)

    def key(self, qualname: str, arguments_digest: str) -> str:
        """The next re-attach key for this call: the n-th identical call gets occurrence n."""
        call = f"{qualname}\0{arguments_digest}"
        occurrence = self.calls[call]
        self.calls[call] += 1
        return hashlib.sha256(f"{self.run_id}\0{call}\0{occurrence}".encode()).hexdigest()


_current_run: ContextVar[_Run | None] = ContextVar("humanlayer_run", default=None)


def _seconds(value: float | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ConfigurationError(
            f"{what} must be a positive, finite number of seconds or a timedelta, not {value!r}"
        )
    return seconds


def _check_callable(hook: T | None, what: str) -> T | None:
    if hook is not None and not callable(hook):
        raise ConfigurationError(f"{what} must be a function, not {hook!r}")
    return hook


def _parse_listen(listen: str | None) -> tuple[str, int] | None:
    if listen is None:
        return None
    if not isinstance(listen, str):
        raise ConfigurationError(
            f'listen must be "host:port" (e.g. "127.0.0.1:8787") or None, not {listen!r}'
        )
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(
            f'listen must be "host:port" (e.g. "127.0.0.1:8787") or None, not {listen!r}'
        )
    return host.strip("[]"), int(port)


def _approver_tuple(approvers: Iterable[str] | str | None) -> tuple[str, ...]:
    if approvers is None:
        return ()
    checked = (approvers,) if isinstance(approvers, str) else tuple(approvers)
    if not all(isinstance(approver, str) and approver for approver in checked):
        raise ConfigurationError(f"approvers must be non-empty strings (ids, addresses), not {approvers!r}")
    return checked


def _check_channels(channels: Iterable[Channel]) -> list[Channel]:
    checked = list(channels)
    for channel in checked:
        if not isinstance(channel, Channel):
            raise ConfigurationError(f"{channel!r} is not a Channel (see humanlayer_async.channels.base)")
    return checked


def _default_channels() -> list[Channel]:
    if sys.stdin is not None and sys.stdin.isatty():
        from .channels.console import ConsoleChannel

        return [ConsoleChannel()]
    logger.warning(
        "humanlayer.no_channels",
        detail="stdin is not a terminal and no approval_channels were given: "
        "requests are decided only through hl.decide() / hl.respond()",
    )
    return []


class _ChannelDecider:
    """The narrow handle channels get: decide, respond, get, pending, claim, nothing else."""

    def __init__(self, hl: HumanLayer) -> None:
        self.decide = hl.decide
        self.respond = hl.respond
        self.get = hl.get
        self.pending = hl.pending
        self.claim = hl.store.claim


class _GateHandle:
    """The narrow handle the gate gets: ask, then claim and record the run; nothing else."""

    def __init__(self, hl: HumanLayer) -> None:
        self.ask = hl._ask
        self.begin_execution = hl._begin_execution
        self.finish_execution = hl._finish_execution


class HumanLayer:
    """Gates tools behind a human's approval and routes the answers back to them.

    Args:
        approval_channels: Where requests go. ``None``: the terminal when stdin is a
            TTY, otherwise none. ``[]``: none; decisions come only from ``decide()``,
            ``respond()`` and the listener.
        store: Where requests and decisions live: a store, or a URL as the CLI takes
            (``sqlite:///approvals.db``, ``postgresql://host/db?schema=name``). Default: a
            new ``MemoryStore``.
        timeout: Seconds (or a ``timedelta``) a request waits before it times out and
            the call fails closed. Finite by default: one hour.
        on_reject: ``"raise"`` (``ApprovalDenied``) or ``"return"`` (the refusal as a
            sentence, for loops that hand tool results to an LLM).
        listen: ``"host:port"`` for the embedded listener, or ``None`` to mount
            ``asgi_app`` in your own server.
        run_id: Names the agent run; with a durable store, a restarted process that
            makes the same gated call again re-attaches to its request instead of asking
            twice (see ``run()`` to name runs per task).
        render: Turns a call's arguments into what approvers, stores and logs see.
            Default: ``mask_secrets``.
        max_pending: The most requests this ``HumanLayer`` waits for at once; a gated
            call beyond it raises ``TooManyPending`` without asking (a bound on what a
            runaway agent can queue). Default: no limit.
        trusted_proxies: The reverse proxies (IP addresses or networks, e.g.
            ``["127.0.0.1"]``, ``["10.0.0.0/8"]``) whose ``Forwarded``/``X-Forwarded-For``
            headers name the client, for the web console's loopback-only check. Default:
            none; a request carrying these headers from any other peer, loopback included,
            is then a remote one. The environment (``FORWARDED_ALLOW_IPS``) is never read.
    """

    def __init__(
        self,
        approval_channels: Sequence[Channel] | None = None,
        *,
        store: Store | str | None = None,
        timeout: float | timedelta = 3600.0,
        on_reject: OnReject = "raise",
        listen: str | None = "127.0.0.1:8787",
        run_id: str | None = None,
        render: Render = mask_secrets,
        max_pending: int | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        if max_pending is not None and (isinstance(max_pending, bool) or max_pending < 1):
            raise ConfigurationError(f"max_pending must be a positive number or None, not {max_pending!r}")
        self._channels = _check_channels(
            _default_channels() if approval_channels is None else approval_channels
        )
        if isinstance(store, str):  # a URL, as the CLI and HUMANLAYER_STORE name stores
            from .stores.url import store_from_url

            store = store_from_url(store)
        if store is not None and not isinstance(store, Store):
            raise ConfigurationError(f"{store!r} is not a Store (see humanlayer_async.stores.base)")
        self._store: Store = MemoryStore() if store is None else store
        self._durable: DurableStore | None = self._store if isinstance(self._store, DurableStore) else None
        self._timeout = _seconds(timeout, "timeout")
        self._on_reject = _check_on_reject(on_reject)
        self._listen = _parse_listen(listen)
        self._default_run = None if run_id is None else _Run(run_id)
        self._always_listen = False
        self._max_pending = max_pending
        self._trusted_proxies: tuple[IPNetwork, ...] = ()
        if trusted_proxies != ():  # checked now: the default alone needs no listener this early
            from .listener import trusted_networks

            self._trusted_proxies = trusted_networks(trusted_proxies)
        self._asking = 0  # calls between ask() and their decision: what max_pending bounds
        # Work aclose() lets finish: waiters storing their cancellation, channel updates.
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._render = _check_callable(render, "render") or mask_secrets
        self._decider: Decider = _ChannelDecider(self)
        self._asker = _GateHandle(self)
        self._bridge = Bridge()
        # Bound to the event loop of the first use:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registry: Registry | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._task_group: TaskGroup | None = None
        self._startup_error: BaseException | None = None
        # Every channel this HumanLayer owns: the defaults, and those given to decorators.
        self._all_channels: dict[int, Channel] = {id(c): c for c in self._channels}
        self._started_channels: set[int] = set()
        self._app: Starlette | None = None
        self._listener: Listener | None = None
        self._channel_lock: anyio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        names = ", ".join(channel.name for channel in self._channels)
        return f"HumanLayer(channels=[{names}], store={self._store!r}, timeout={self._timeout})"

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The default approval channels."""
        return tuple(self._channels)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def run_id(self) -> str | None:
        """The run the current task's gated calls belong to (``run()``, else the constructor's)."""
        run = _current_run.get() or self._default_run
        return None if run is None else run.run_id

    @contextlib.contextmanager
    def run(self, run_id: str) -> Iterator[None]:
        """Make the gated calls in this block one run named ``run_id``, for re-attach.

        Holds for the current task and the tasks it starts inside the block. With a
        durable store, a gated call whose request from an earlier process of the same
        run is still there re-attaches to it (``with hl.run("invoice-42"): ...``).
        """
        if not run_id:
            raise ConfigurationError("run_id must be a non-empty string")
        token = _current_run.set(_Run(run_id))
        try:
            yield
        finally:
            _current_run.reset(token)

    @property
    def asgi_app(self) -> Starlette:
        """The listener's ASGI app: every channel's callback routes and ``GET /healthz``.

        Served by the embedded server when ``listen`` is set; with ``listen=None``, mount
        it in your own Starlette/FastAPI app and enter ``lifespan`` (or ``async with hl``)
        in that app's lifespan.
        """
        if self._app is None:
            from .listener import build_app

            self._app = build_app(
                [route for c in self._all_channels.values() for route in c.routes()],
                trusted_proxies=self._trusted_proxies,
            )
        return self._app

    @property
    def url(self) -> str | None:
        """The embedded listener's base URL once it is serving (``None`` otherwise)."""
        return None if self._listener is None else self._listener.url

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """A Starlette lifespan that runs this ``HumanLayer`` (``Starlette(lifespan=hl.lifespan)``)."""
        async with self:
            yield

    def _register(self, *channels: Channel) -> list[Channel]:
        """Own channels given to a decorator: they start, serve routes and close with us."""
        for channel in channels:
            if id(channel) not in self._all_channels:
                self._all_channels[id(channel)] = channel
                if self._app is not None:
                    self._app.router.routes.extend(channel.routes())
        return list(channels)

    # -- decorators ------------------------------------------------------------------

    @overload
    def require_approval(self, tool: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def require_approval(self, tool: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def require_approval(
        self,
        tool: None = None,
        /,
        *,
        condition: Condition | None = None,
        context: ContextHook | Mapping[str, Any] | None = None,
        channels: Sequence[Channel] | None = None,
        approvers: Iterable[str] | str | None = None,
        timeout: float | timedelta | None = None,
        on_reject: Literal["raise"] | None = None,
        render: Render | None = None,
    ) -> Gated: ...

    @overload
    def require_approval(
        self,
        tool: None = None,
        /,
        *,
        condition: Condition | None = None,
        context: ContextHook | Mapping[str, Any] | None = None,
        channels: Sequence[Channel] | None = None,
        approvers: Iterable[str] | str | None = None,
        timeout: float | timedelta | None = None,
        on_reject: Literal["return"],
        render: Render | None = None,
    ) -> GatedOrSentence: ...

    def require_approval(
        self,
        tool: Callable[..., Any] | None = None,
        /,
        *,
        condition: Condition | None = None,
        context: ContextHook | Mapping[str, Any] | None = None,
        channels: Sequence[Channel] | None = None,
        approvers: Iterable[str] | str | None = None,
        timeout: float | timedelta | None = None,
        on_reject: OnReject | None = None,
        render: Render | None = None,
    ) -> Gated | GatedOrSentence | Callable[..., Coroutine[Any, Any, Any]]:
        """Gate a sync or async tool: when ``condition`` holds, a human must approve each call.

        Use it as ``@hl.require_approval`` or ``@hl.require_approval(...)``; every option is
        a keyword. ``condition`` and ``context`` get the call's bound arguments (defaults
        applied) as keywords and may be sync or async; a condition that raises means
        approval is required. They are checked here, when the tool is decorated: one that
        is not callable, or cannot take the tool's arguments as keywords, raises
        ``ConfigurationError`` naming the tool and the parameter. The gated function is
        always awaitable, keeps the tool's name, docstring and signature, and runs a sync
        tool in a worker thread.
        """
        if tool is not None and not callable(tool):
            raise ConfigurationError(
                f"require_approval takes its options as keywords (condition=..., context=...), not {tool!r}"
            )
        if getattr(tool, "__name__", None) == "<lambda>":
            raise ConfigurationError(
                "require_approval was given a lambda as the tool to gate: "
                "pass a condition as a keyword, require_approval(condition=lambda ...: ...)"
            )
        options: dict[str, Any] = {
            "condition": condition,
            "context": context,
            "render": _check_callable(render, "render") or self._render,
            "channels": None if channels is None else self._register(*_check_channels(channels)),
            "approvers": _approver_tuple(approvers),
            "timeout": None if timeout is None else _seconds(timeout, "timeout"),
            "on_reject": self._on_reject if on_reject is None else _check_on_reject(on_reject),
        }

        def decorate(func: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
            return gate(self._asker, func, **options)

        return cast(Gated, decorate) if tool is None else decorate(tool)

    def human_as_tool(
        self,
        *,
        channels: Sequence[Channel] | None = None,
        approvers: Iterable[str] | str | None = None,
        timeout: float | timedelta | None = None,
    ) -> Callable[[str], Coroutine[Any, Any, str]]:
        """A tool for free-form questions: ``await contact_human("...")`` returns the answer.

        The answer comes from ``respond()`` or a channel. A declined or unanswered
        question raises ``ApprovalDenied`` / ``ApprovalTimeout`` (or, with
        ``on_reject="return"``, returns that sentence).
        """
        checked = None if channels is None else self._register(*_check_channels(channels))
        allowed = _approver_tuple(approvers)
        seconds = None if timeout is None else _seconds(timeout, "timeout")

        async def contact_human(message: str) -> str:
            """Ask a human a free-form question and wait for their answer.

            Use it when you need a judgement, a missing fact or a clarification only a
            person can give. The return value is the human's answer, as text.
            """
            spec = RequestSpec(
                kind="question",
                function="contact_human",
                kwargs={"message": message},
                context={},
                approvers=allowed,
                timeout=seconds,
                channels=checked,
                message=message,
            )
            decision = await self._ask(spec)
            if decision.answer is not None:
                return decision.answer
            refused = refusal("contact_human", decision)
            if self._on_reject == "return":
                return str(refused)
            raise refused

        return contact_human

    def blocking(self, func: Callable[P, Awaitable[R]]) -> Callable[P, R]:
        """A plain sync function that runs the gated ``func`` and blocks until it finishes.

        For sync agents: the call runs on an event loop in a background thread that
        this ``HumanLayer`` owns (started on first use, stopped by ``close()``). Use
        one ``HumanLayer`` either this way or from your own event loop, not both.
        """

        @functools.wraps(func)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return self._bridge.call(functools.partial(func, *args, **kwargs))

        return call

    # -- the API channels and operators use ----------------------------------------

    async def decide(
        self,
        request_id: str,
        approved: bool,
        *,
        by: str,
        comment: str | None = None,
        via: str = "api",
    ) -> Decision:
        """Approve or deny a request; returns the decision that stands.

        The first decision wins: a later one returns the first, unchanged. Raises
        ``UnknownRequest`` for an unknown id and ``NotAnApprover`` when ``by`` is not
        among the request's approvers (the request then stays pending).
        """
        request = await self._store.get(request_id)
        self._check_approver(request, by, via)
        status = Status.APPROVED if approved else Status.DENIED
        return await self._record(Decision(request_id, approved, status, by, via, comment, datetime.now(UTC)))

    async def respond(self, request_id: str, text: str, *, by: str, via: str = "api") -> Decision:
        """Answer a question from ``human_as_tool``; returns the decision that stands."""
        request = await self._store.get(request_id)
        if request.kind != "question":
            raise HumanLayerError(f"request {request_id!r} is an approval, not a question: use decide()")
        self._check_approver(request, by, via)
        decision = Decision(request_id, True, Status.APPROVED, by, via, None, datetime.now(UTC), text)
        return await self._record(decision)

    async def cancel(
        self, request_id: str, *, by: str, reason: str | None = None, via: str = "api"
    ) -> Decision:
        """Withdraw a pending request: its caller gets ``ApprovalDenied`` (status ``cancelled``).

        A cancellation is a decision like any other: ``by`` must be among the request's
        approvers (``NotAnApprover`` otherwise; the request stays pending). The waiting
        program withdrawing its own call (its task cancelled, ``aclose()``) needs no approver.
        """
        request = await self._store.get(request_id)
        self._check_approver(request, by, via)
        return await self._settle(request_id, Status.CANCELLED, by=by, via=via, comment=reason)

    async def get(self, request_id: str) -> ApprovalRequest:
        """One request, with its decision once decided. Raises ``UnknownRequest``."""
        return await self._store.get(request_id)

    async def pending(self, *, run_id: str | None = None, kind: Kind | None = None) -> list[ApprovalRequest]:
        """The requests still waiting for a human, oldest first."""
        return await self._store.list_pending(run_id=run_id, kind=kind)

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Run the listener, the channels and the store follower until cancelled.

        For processes that only take callbacks (``humanlayer-async serve APP``): the
        listener serves ``GET /healthz`` even when no channel has routes. Needs ``listen``.
        """
        if self._listen is None:
            raise ConfigurationError("serve() needs listen='host:port' on the HumanLayer")
        self._always_listen = True
        async with self:
            task_status.started()
            await anyio.sleep_forever()

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background tasks, fail the calls still waiting, close channels and store."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._registry is not None and self._registry.close():
                # The failed waiters wake first and start storing their cancellation.
                await anyio.lowlevel.checkpoint()
            await self._drain()
            if self._supervisor is not None and self._closing is not None:
                self._closing.set()
                await self._supervisor
            for channel in self._all_channels.values():
                await channel.aclose()
            await self._store.aclose()

    def close(self) -> None:
        """Close from sync code: what ``aclose()`` does, then stop the ``blocking()`` thread."""
        if self._bridge.running:
            self._bridge.call(self.aclose)
        self._bridge.close()

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task_group is not None:
            return
        if self._closed:
            raise HumanLayerError("this HumanLayer is closed; create a new one")
        if self._loop is None:
            self._loop = loop
            self._registry = Registry(loop)
            self._ready, self._closing = anyio.Event(), anyio.Event()
            self._channel_lock = anyio.Lock()
            self._supervisor = loop.create_task(self._supervise(), name="humanlayer-supervisor")
        elif self._loop is not loop:
            raise ConfigurationError(
                "this HumanLayer is bound to the event loop it first ran in; "
                "create one HumanLayer per event loop (or use hl.blocking() from sync code)"
            )
        assert self._ready is not None
        await self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    async def _supervise(self) -> None:
        assert self._ready is not None and self._closing is not None
        try:
            async with anyio.create_task_group() as task_group:
                for key, channel in list(self._all_channels.items()):
                    await task_group.start(channel.run, self._decider)
                    self._started_channels.add(key)
                if self._listen is not None and (
                    self._always_listen or any(c.routes() for c in self._all_channels.values())
                ):
                    from .listener import Listener

                    self._listener = Listener(self.asgi_app, *self._listen)
                    await task_group.start(self._listener.serve)
                    for channel in self._all_channels.values():
                        if isinstance(channel, ListenerAware):
                            channel.listening(self._listener.url)
                task_group.start_soon(self._follow_store)
                self._task_group = task_group
                self._ready.set()
                await self._closing.wait()
                task_group.cancel_scope.cancel()
        except Exception as exc:
            error = exc.exceptions[0] if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1 else exc
            if not self._ready.is_set():
                self._startup_error = error
            else:
                logger.error("humanlayer.crashed", error=repr(error))
                self._startup_error = HumanLayerError(f"the HumanLayer's background tasks stopped: {error!r}")
        finally:
            self._task_group = None
            self._ready.set()

    async def _follow_store(self) -> None:
        """Wake local waiters when another process decides one of their requests.

        A store that fails (a database outage outlasting its own reconnects) is followed
        again after a pause that doubles up to 30 s: the listener and the calls waiting
        here carry on meanwhile, and a new ``watch()`` catches up on what it missed.
        """
        registry = self._registry
        assert registry is not None
        pause = _FOLLOW_RETRY
        while True:
            try:
                async for event in self._store.watch():
                    pause = _FOLLOW_RETRY
                    if event.kind == "decided" and event.request_id in registry:
                        request = await self._store.get(event.request_id)
                        if request.decision is not None:
                            registry.resolve(request.decision)
                return  # the store was closed
            except StoreError as exc:
                logger.error("humanlayer.store_follow_failed", error=str(exc), retry_in=pause)
            await anyio.sleep(pause)
            pause = min(pause * 2, 30.0)

    def _spawn(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the supervisor's task group, logging what it raises."""
        if self._task_group is None:
            return

        async def guarded() -> None:
            try:
                await func(*args)
            except Exception as exc:
                logger.error("humanlayer.background_failed", task=func.__name__, error=repr(exc))
            finally:
                self._done_working()

        self._busy += 1  # counted from now, so aclose() waits for it even before it starts
        self._task_group.start_soon(guarded)

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._done_working()

    def _done_working(self) -> None:
        self._busy -= 1
        if not self._busy and self._idle is not None:
            self._idle.set()

    async def _drain(self) -> None:
        """Let work in flight (cancellations being stored, channel updates) finish, within a bound."""
        with anyio.move_on_after(_DRAIN_SECONDS, shield=True) as scope:
            while self._busy:
                self._idle = anyio.Event()
                await self._idle.wait()
        if scope.cancelled_caught:
            logger.warning("humanlayer.drain_timed_out", unfinished=self._busy, seconds=_DRAIN_SECONDS)

    async def _start_channel(self, channel: Channel) -> None:
        """Start a channel given to ``require_approval`` that the supervisor did not start."""
        assert self._channel_lock is not None and self._task_group is not None
        async with self._channel_lock:
            if id(channel) not in self._started_channels:
                self._register(channel)
                await self._task_group.start(channel.run, self._decider)
                self._started_channels.add(id(channel))
                if self._listener is not None and isinstance(channel, ListenerAware):
                    channel.listening(self._listener.url)

    # -- one request, from creation to decision -----------------------------------

    async def _audit(self, event: AuditEvent, request_id: str, **fields: Any) -> None:
        """Log ``event`` and append it to the store's audit trail."""
        await self._store.record(make_entry(event, request_id, **fields))

    async def _ask(self, spec: RequestSpec) -> Decision:
        """Store a request, deliver it, and wait for the decision that stands.

        With a durable store and a run, a call whose request an earlier process of the
        run left behind re-attaches to it instead: it waits for that request (no second
        message) or gets its decision at once.
        """
        await self._ensure_started()
        if self._max_pending is not None and self._asking >= self._max_pending:
            logger.warning("approval.too_many_pending", function=spec.function, max_pending=self._max_pending)
            raise TooManyPending(spec.function, self._max_pending)
        self._asking += 1
        try:
            # One frame from here to the wait: each nested coroutine would cost every
            # pending call a few hundred bytes.
            assert self._loop is not None and self._registry is not None
            channels = self._channels if spec.channels is None else spec.channels
            for channel in channels:
                if id(channel) not in self._started_channels:
                    await self._start_channel(channel)
            timeout = self._timeout if spec.timeout is None else spec.timeout
            now = datetime.now(UTC)
            run = _current_run.get() or self._default_run
            request = ApprovalRequest(
                id=secrets.token_hex(16),
                kind=spec.kind,
                function=spec.function,
                kwargs=spec.kwargs,
                context=spec.context,
                approvers=spec.approvers,
                created_at=now,
                expires_at=now + timedelta(seconds=timeout),
                run_id=None if run is None else run.run_id,
                message=spec.message,
                doc=spec.doc,
            )
            if self._durable is not None:
                return await self._ask_durable(self._durable, request, spec, channels, run)
            await self._store.create(request)
            await self._store.record(requested_entry(request))
            future = self._registry.wait(request.id, self._loop.time() + timeout)
            return await self._wait(request, channels, future, {}, deliver=True)
        finally:
            self._asking -= 1

    async def _ask_durable(
        self,
        store: DurableStore,
        request: ApprovalRequest,
        spec: RequestSpec,
        channels: Sequence[Channel],
        run: _Run | None,
    ) -> Decision:
        """``ask`` on a durable store: bind the arguments' digest, and re-attach within a run."""
        assert self._loop is not None and self._registry is not None
        arguments = digest(spec.kwargs)  # a StoreError naming an argument without a JSON form
        key = None if run is None else run.key(spec.qualname or spec.function, arguments)
        request = replace(request, key=key, digest=arguments)
        lifetime = (request.expires_at - request.created_at).total_seconds()
        # Wait before storing: another process may decide as soon as the request is stored.
        future = self._registry.wait(request.id, self._loop.time() + lifetime)
        try:
            stored = await store.create_or_attach(request)
        except BaseException:
            self._registry.discard(request.id)
            raise
        if stored.id == request.id:  # its audit entry was written with it
            return await self._wait(request, channels, future, {}, deliver=True)
        self._registry.discard(request.id)
        await self._audit(
            "approval.reattached",
            stored.id,
            function=stored.function,
            run_id=stored.run_id,
            status=stored.status,
        )
        if stored.decision is not None:
            return stored.decision
        remaining = (stored.expires_at - datetime.now(UTC)).total_seconds()
        future = self._registry.wait(stored.id, self._loop.time() + max(0.0, remaining))
        try:
            refs = await self._delivered(store, stored, channels)
            latest = await store.get(stored.id)  # decided between attaching and waiting?
        except BaseException:
            self._registry.discard(stored.id, future)
            raise
        if latest.decision is not None:
            self._registry.resolve(latest.decision)
        return await self._wait(stored, channels, future, refs, deliver=False)

    async def _delivered(
        self, store: DurableStore, request: ApprovalRequest, channels: Sequence[Channel]
    ) -> dict[int, str | None]:
        """Where an earlier process delivered ``request``, from the audit trail, for updates."""
        index = {channel.name: position for position, channel in enumerate(channels)}
        return {
            index[entry.fields["channel"]]: entry.fields.get("ref")
            for entry in await store.history(request_id=request.id)
            if entry.event == "approval.delivered" and entry.fields.get("channel") in index
        }

    async def _wait(
        self,
        request: ApprovalRequest,
        channels: Sequence[Channel],
        future: asyncio.Future[Outcome],
        refs: dict[int, str | None],
        *,
        deliver: bool,
    ) -> Decision:
        """Deliver a new request, wait for its decision, settle a timeout or a cancellation."""
        assert self._registry is not None
        try:
            if deliver:
                await self._deliver(request, channels, refs)
            outcome = await future
            if outcome is CLOSED:
                raise HumanLayerError("the HumanLayer was closed while this call waited for a human")
            if outcome is EXPIRED:
                outcome = await self._settle(request.id, Status.TIMED_OUT, via="timeout")
            decision = outcome
        except ChannelError:
            raise
        except (anyio.get_cancelled_exc_class(), HumanLayerError) as exc:
            if request.key is not None:
                # A run's request outlives its caller: a restarted process re-attaches to it.
                logger.info("approval.left_pending", request_id=request.id, run_id=request.run_id)
                raise
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            with self._working(), anyio.CancelScope(shield=True):
                decision = await self._settle(
                    request.id,
                    Status.CANCELLED,
                    via="caller" if cancelled else "shutdown",
                    comment="the waiting call was cancelled" if cancelled else "the HumanLayer closed",
                )
                if refs:
                    self._spawn(self._update, replace(request, decision=decision), channels, refs)
            raise
        finally:
            self._registry.discard(request.id, future)
        if refs:  # tell the channels that delivered it; none did: nothing to update
            self._spawn(self._update, replace(request, decision=decision), channels, refs)
        return decision

    async def _begin_execution(self, decision: Decision, spec: RequestSpec) -> Execution | None:
        """Before an approved call runs: claim its one run in a durable store.

        Returns an earlier run's recorded result for a replayed call; raises
        ``OutcomeUnknown`` when an earlier run started and never finished, and
        ``AlreadyExecuted`` when it finished without a JSON result.
        """
        if self._durable is not None:
            earlier = await self._durable.begin_execution(decision.request_id, digest(spec.kwargs))
            if earlier is not None and earlier.state == "executing":
                await self._audit("approval.outcome_unknown", decision.request_id, function=spec.function)
                raise OutcomeUnknown(decision.request_id, spec.function)
            if earlier is not None:
                if earlier.result is None:
                    raise AlreadyExecuted(decision.request_id, spec.function, earlier.outcome)
                return earlier
        await self._audit("approval.executing", decision.request_id, function=spec.function)
        return None

    async def _finish_execution(
        self, decision: Decision, spec: RequestSpec, error: BaseException | None, result: Any
    ) -> None:
        """After an approved call: record how it ended (and, in a run, its JSON result)."""
        outcome = "ok" if error is None else type(error).__name__
        if self._durable is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            # A cancelled tool stays "executing": whether its effect happened is unknown.
            recorded = None
            if error is None and (_current_run.get() or self._default_run) is not None:
                with contextlib.suppress(StoreError):  # no JSON form: a replay gets AlreadyExecuted
                    recorded = dumps(result, "result")
            await self._durable.finish_execution(decision.request_id, outcome, recorded)
        await self._audit("approval.executed", decision.request_id, function=spec.function, outcome=outcome)

    async def _deliver(
        self, request: ApprovalRequest, channels: Sequence[Channel], refs: dict[int, str | None]
    ) -> None:
        """Send to every channel at once; fail closed when none delivered."""
        if not channels:
            return
        errors: list[str] = []

        async def send(index: int, channel: Channel) -> None:
            try:
                ref = await channel.send(request)
            except Exception as exc:
                errors.append(f"{channel.name}: {exc}")
                logger.warning(
                    "approval.delivery_failed", request_id=request.id, channel=channel.name, error=str(exc)
                )
                return
            refs[index] = ref
            await self._audit("approval.delivered", request.id, channel=channel.name, ref=ref)

        if len(channels) == 1:
            await send(0, channels[0])
        else:
            async with anyio.create_task_group() as task_group:
                for index, channel in enumerate(channels):
                    task_group.start_soon(send, index, channel)
        if refs:
            return
        reason = "; ".join(errors)
        decision = await self._settle(request.id, Status.FAILED, via="delivery", comment=reason)
        if decision.status is Status.FAILED:
            raise ChannelError(f"no channel could deliver the request for {request.function}: {reason}")

    async def _update(
        self, request: ApprovalRequest, channels: Sequence[Channel], refs: Mapping[int, str | None]
    ) -> None:
        """Tell every channel that delivered the request how it ended."""

        async def update(channel: Channel, ref: str | None) -> None:
            try:
                await channel.update(request, ref)
            except Exception as exc:
                logger.warning(
                    "approval.update_failed", request_id=request.id, channel=channel.name, error=str(exc)
                )

        async with anyio.create_task_group() as task_group:
            for index, ref in refs.items():
                task_group.start_soon(update, channels[index], ref)

    async def _settle(
        self,
        request_id: str,
        status: Status,
        *,
        via: str,
        by: str | None = None,
        comment: str | None = None,
    ) -> Decision:
        """Store a closing decision nobody approved (timeout, cancellation, failure)."""
        return await self._record(Decision(request_id, False, status, by, via, comment, datetime.now(UTC)))

    async def _record(self, decision: Decision) -> Decision:
        standing = await self._store.decide(decision)
        if standing == decision and self._durable is None:  # a durable store wrote it with the decision
            await self._store.record(decision_entry(decision))
        if self._registry is not None:
            self._registry.resolve(standing)
        return standing

    def _check_approver(self, request: ApprovalRequest, by: str, via: str) -> None:
        if not request.may_decide(by):
            logger.warning("approval.not_an_approver", request_id=request.id, by=by, via=via)
            raise NotAnApprover(request.id, by)


def _check_on_reject(on_reject: str) -> OnReject:
    if on_reject not in ("raise", "return"):
        raise ConfigurationError(f'on_reject must be "raise" or "return", not {on_reject!r}')
    return cast(OnReject, on_reject)
