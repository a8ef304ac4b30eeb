"""HumanLayer: the facade. Configuration, decorators and lifecycle; it wires the parts.

The engine (``_engine.py``) owns each request from creation to its final state; the
runtime (``_runtime.py``) owns every background task; the store keeps requests,
decisions and the audit trail; channels deliver and take answers; the listener serves
their routes. ``HumanLayer`` checks the configuration, builds and connects them, and is
the API users hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import sys
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
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar, cast, overload

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._audit import logger
from ._bridge import Bridge
from ._codec import to_json
from ._durations import seconds
from ._engine import Engine, Run, current_run
from ._exceptions import ConfigurationError, HumanLayerError, NotAnApprover, StoreError
from ._gate import (
    Condition,
    ContextHook,
    Gated,
    GatedOrSentence,
    OnReject,
    ToolSpec,
    gate,
    refusal,
    tool_spec,
)
from ._models import ApprovalRequest, Decision, Grant, Kind, Principal, acting_for
from ._observe import Observer, Observers
from ._render import Render, mask_secrets
from ._runtime import Runtime
from ._schedule import Escalation
from .channels.base import Answered, Channel, ListenerAware, channel_label
from .policy import Policy, Rule
from .stores.base import Store
from .stores.memory import MemoryStore

if TYPE_CHECKING:  # the listener (starlette, uvicorn) is imported once it is built or served
    from starlette.applications import Starlette

    from ._metrics import Metrics
    from .listener import IPNetwork, Listener

__all__ = ["HumanLayer"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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


def _standing(answered: Answered) -> Decision:
    """The decision an answer that is not a vote (an answer to a question, a cancellation) left."""
    assert answered.decision is not None, "only a vote leaves a request pending"
    return answered.decision


def _check_where(where: Mapping[str, Any], parameters: frozenset[str] | None, tool: str) -> dict[str, Any]:
    """A grant's ``where``: argument names of the tool, each with a JSON value."""
    if not isinstance(where, Mapping):
        raise ConfigurationError(f"where must be a mapping of argument names to values, not {where!r}")
    for name, value in where.items():
        if parameters is not None and name not in parameters:
            known = ", ".join(sorted(parameters)) or "none"
            raise ConfigurationError(f"where names {name!r}, which is not an argument of {tool} ({known})")
        try:
            to_json(value, f"where value {name!r}")
        except StoreError as exc:
            raise ConfigurationError(str(exc)) from None
    return dict(where)


def _check_approvals(approvals: int) -> int:
    if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 1:
        raise ConfigurationError(
            f"approvals must be a whole number of approvers, 1 or more, not {approvals!r}"
        )
    return approvals


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


class _GateHandle:
    """The narrow handle the gate gets: ask, claim and record the run, and block a sync caller."""

    def __init__(self, hl: HumanLayer) -> None:
        self._hl = hl
        engine = hl._engine
        self.ask = engine.ask if engine.observer is None else engine.observed_ask
        self.shadow = engine.shadow
        self.begin_execution = hl._engine.begin_execution
        self.finish_execution = hl._engine.finish_execution

    def block(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the ``HumanLayer``'s event loop; block this thread until it is done.

        From a thread with no event loop: a worker thread while the ``HumanLayer`` runs in
        the application's loop, or a plain script (the loop then runs in a background thread
        the ``HumanLayer`` owns, as for ``blocking()``).
        """
        hl = self._hl
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise HumanLayerError(
                "a gated sync tool was called on a thread that runs an event loop: blocking it until "
                "a human answers would freeze every other call. Make the tool async (async def), or "
                "call it in a worker thread (await anyio.to_thread.run_sync(tool, ...))"
            )
        loop = hl._runtime.loop
        if loop is None or loop is hl._bridge.loop:
            return hl._bridge.call(func)
        if loop.is_closed() or not loop.is_running():
            raise HumanLayerError("the event loop this HumanLayer runs in has stopped")
        return asyncio.run_coroutine_threadsafe(_call(func), loop).result()


async def _call(func: Callable[[], Awaitable[T]]) -> T:
    return await func()


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
        tracing: bool | Any = False,
        metrics: bool | Any = False,
        metrics_token: str | None = None,
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
        self._timeout = seconds(timeout, "timeout")
        self._on_reject = _check_on_reject(on_reject)
        self._listen = _parse_listen(listen)
        self._always_listen = False
        self._trusted_proxies: tuple[IPNetwork, ...] = ()
        if trusted_proxies != ():  # checked now: the default alone needs no listener this early
            from .listener import trusted_networks

            self._trusted_proxies = trusted_networks(trusted_proxies)
        self._render = _check_callable(render, "render") or mask_secrets
        # Every channel this HumanLayer owns: the defaults, and those given to decorators.
        self._all_channels: dict[int, Channel] = {id(c): c for c in self._channels}
        self._app: Starlette | None = None
        self._listener: Listener | None = None
        self._bridge = Bridge()
        self._runtime = Runtime(self._start, wake=self._wake)
        self._engine = Engine(
            self._store,
            self._runtime,
            prepare=self._prepare,
            channels=self._channels,
            timeout=self._timeout,
            max_pending=max_pending,
            default_run=None if run_id is None else Run(run_id),
        )
        self._metrics = _metrics(metrics, metrics_token)
        observers = [*_tracing(tracing), *([] if self._metrics is None else [self._metrics])]
        if observers:
            self._engine.observer = observers[0] if len(observers) == 1 else Observers(observers)
        self._asker = _GateHandle(self)
        # check_call's specs, by tool and rule; the rule is kept with its spec, so that a rule
        # of a reloaded policy that happens to reuse a collected one's id() is never mistaken for it
        self._foreign: dict[tuple[str, str | None, int], tuple[Rule, ToolSpec]] = {}

    def __repr__(self) -> str:
        names = ", ".join(channel.name for channel in self._channels)
        state = self._runtime.state.value
        return f"HumanLayer(channels=[{names}], store={self._store!r}, timeout={self._timeout}, {state})"

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The default approval channels."""
        return tuple(self._channels)

    @property
    def store(self) -> Store:
        """Where this ``HumanLayer``'s requests, decisions and audit trail live
        (``await hl.store.history()`` reads the trail)."""
        return self._store

    @property
    def run_id(self) -> str | None:
        """The run the current task's gated calls belong to (``run()``, else the constructor's)."""
        run = self._engine.run()
        return None if run is None else run.run_id

    @contextlib.contextmanager
    def run(self, run_id: str, *, requested_by: str | None = None) -> Iterator[None]:
        """Make the gated calls in this block one run named ``run_id``, for re-attach.

        Holds for the current task and the tasks it starts inside the block. With a
        durable store, a gated call whose request from an earlier process of the same
        run is still there re-attaches to it (``with hl.run("invoice-42"): ...``).
        ``requested_by`` is who the run acts for, as in ``on_behalf_of``.
        """
        if not run_id:
            raise ConfigurationError("run_id must be a non-empty string")
        token = current_run.set(Run(run_id))
        try:
            with acting_for(requested_by):
                yield
        finally:
            current_run.reset(token)

    @contextlib.contextmanager
    def on_behalf_of(self, person: str) -> Iterator[None]:
        """Record ``person`` as who the gated calls in this block act for: they may never
        decide those requests, whatever the approver lists say (separation of duties).

        Around an agent's turn for a user: a context variable, so concurrent turns each
        carry their own. ``person`` is a name approver lists know them by (an email knows
        them in every channel; a Slack user id in Slack).
        """
        with acting_for(person):
            yield

    @property
    def asgi_app(self) -> Starlette:
        """The listener's ASGI app: every channel's callback routes and ``GET /healthz``.

        Served by the embedded server when ``listen`` is set; with ``listen=None``, mount
        it in your own Starlette/FastAPI app and enter ``lifespan`` (or ``async with hl``)
        in that app's lifespan.
        """
        if self._app is None:
            from .listener import build_app

            routes = [route for c in self._all_channels.values() for route in c.routes()]
            if self._metrics is not None:
                from starlette.routing import Route

                routes.append(Route("/metrics", self._metrics.endpoint, methods=["GET"]))
            observer = self._engine.observer
            self._app = build_app(
                routes,
                trusted_proxies=self._trusted_proxies,
                on_refused=None if observer is None else observer.refused,
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
    def require_approval(self, tool: Callable[P, R], /) -> Callable[P, R]: ...

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
        approvals: int = 1,
        editable: bool | Sequence[str] = False,
        remind_every: float | timedelta | None = None,
        escalate: Sequence[Escalation] = (),
        mode: Literal["enforce", "shadow"] = "enforce",
        policy: Policy | None = None,
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
        approvals: int = 1,
        editable: bool | Sequence[str] = False,
        remind_every: float | timedelta | None = None,
        escalate: Sequence[Escalation] = (),
        mode: Literal["enforce", "shadow"] = "enforce",
        policy: Policy | None = None,
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
        approvals: int = 1,
        editable: bool | Sequence[str] = False,
        remind_every: float | timedelta | None = None,
        escalate: Sequence[Escalation] = (),
        mode: Literal["enforce", "shadow"] = "enforce",
        policy: Policy | None = None,
        timeout: float | timedelta | None = None,
        on_reject: OnReject | None = None,
        render: Render | None = None,
    ) -> Gated | GatedOrSentence | Callable[..., Any]:
        """Gate a sync or async tool: when ``condition`` holds, a human must approve each call.

        Use it as ``@hl.require_approval`` or ``@hl.require_approval(...)``; every option is
        a keyword. ``condition`` and ``context`` get the call's bound arguments (defaults
        applied) as keywords and may be sync or async; a condition that raises means
        approval is required. They are checked here, when the tool is decorated: one that
        is not callable, or cannot take the tool's arguments as keywords, raises
        ``ConfigurationError`` naming the tool and the parameter.

        The gated function keeps the tool's name, docstring, signature and colour: an
        ``async def`` stays a coroutine function; a plain ``def`` stays a plain function
        that blocks its calling thread until the call is decided, then runs the tool in
        that thread. Call such a sync tool from a plain script or a worker thread
        (``asyncio.to_thread``, ``anyio.to_thread.run_sync``), not on the event loop's
        thread: there it raises ``HumanLayerError`` at once, since blocking would freeze
        every other call.

        ``editable=True`` (every argument) or ``editable=["amount"]`` lets an approver change
        those arguments as they approve (``hl.decide(..., edits={"amount": 5000})``); each
        needs a type hint with an exact JSON form, checked here (``ConfigurationError``).

        ``remind_every`` (seconds or a ``timedelta``) reminds the approvers where the request
        was delivered, at that interval, until it is decided or times out; with a shared store,
        each reminder is sent by one process of the fleet.

        ``escalate=[Escalation(after=..., channels=[...], approvers=[...])]``: a request still
        pending that long after it was made goes to those channels too, and those approvers
        may decide it as well (stored first, so every process honours it). Reminders and
        escalations are scheduled in the store: with a shared store one process of the fleet
        carries out each, and a restarted one carries on where they were.

        ``mode="shadow"`` rolls a gate out: a call that would ask runs at once, and what would
        have been asked is recorded (``approval.shadowed`` in the audit trail, counted by
        ``humanlayer-async stats``). It never waits and never fails because of a channel.

        ``approvals=2`` (or more) needs that many distinct approvers to approve a call,
        whatever channels they answer through; one denial denies it. The same person
        approving twice counts once; the votes so far are on ``hl.get(id).votes``.
        """
        if tool is not None and not callable(tool):
            raise ConfigurationError(
                f"require_approval takes its options as keywords (condition=..., context=...), not {tool!r}"
            )
        if policy is not None:
            given = [
                name
                for name, value, default in (
                    ("condition", condition, None),
                    ("channels", channels, None),
                    ("approvers", approvers, None),
                    ("approvals", approvals, 1),
                    ("editable", editable, False),
                    ("timeout", timeout, None),
                )
                if value != default
            ]
            if given:
                raise ConfigurationError(
                    f"policy= says {', '.join(given)} for each tool: give them in the policy's rules,"
                    " not here"
                )
            if not isinstance(policy, Policy):
                raise ConfigurationError(f"policy= takes a humanlayer_async.policy.Policy, not {policy!r}")
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
            "approvals": _check_approvals(approvals),
            "editable": editable,
            "remind_every": None if remind_every is None else seconds(remind_every, "remind_every"),
            "escalate": self._check_escalations(escalate),
            "shadow": _check_mode(mode),
            "timeout": None if timeout is None else seconds(timeout, "timeout"),
            "on_reject": self._on_reject if on_reject is None else _check_on_reject(on_reject),
        }

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if policy is None:
                return gate(self._asker, func, **options)
            rule = policy.rule_for(getattr(func, "__name__", repr(func)))
            if rule.approve == "never":
                return func
            ruled = {**options, **rule.options, "channels": self._labelled(rule.channels)}
            ruled["timeout"] = rule.timeout
            if rule.approve == "when":
                ruled["condition"] = _ruled(rule)
            return gate(self._asker, func, **ruled)

        return cast(Gated, decorate) if tool is None else decorate(tool)

    def _labelled(self, labels: Sequence[str] | None) -> list[Channel] | None:
        """The channels a policy names by label (``None``: the defaults); an unknown label is
        a ``ConfigurationError`` naming the labels there are."""
        if labels is None:
            return None
        known: dict[str, Channel] = {}
        for channel in self._all_channels.values():
            known.setdefault(channel_label(channel), channel)
        missing = [label for label in labels if label not in known]
        if missing:
            there = ", ".join(sorted(known)) or "none"
            raise ConfigurationError(
                f"the policy names channels labelled {', '.join(missing)}; there are: {there}"
            )
        return [known[label] for label in labels]

    async def check_call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        policy: Policy,
        qualname: str | None = None,
        context: Mapping[str, Any] | None = None,
        schemas: Mapping[str, Any] | None = None,
    ) -> Decision | None:
        """Ask a human about one call of a tool you did not write, as ``policy`` says.

        ``None`` when the policy lets the call run without asking; otherwise the decision that
        stands once a human (or a grant, or the timeout) decided: run the call only when
        ``decision.approved``, with ``decision.edits`` applied. ``qualname`` is what grants key
        on (default: ``tool``; the MCP proxy gives ``server/tool``); ``schemas`` the JSON Schema
        of each argument, for the ``editable`` arguments the rule names. Arguments are shown as
        ``render`` shows them. Channels, approvers, timeout and approvals come from the rule.
        """
        rule = policy.requires(tool, arguments)
        if rule is None:
            return None
        key = (tool, qualname, id(rule))
        cached = self._foreign.get(key)
        if cached is not None and cached[0] is rule:
            spec = cached[1]
        else:
            editable = None
            if rule.editable and schemas:
                names = rule.editable if isinstance(rule.editable, tuple) else tuple(schemas)
                editable = {name: schemas[name] for name in names if name in schemas} or None
            spec = ToolSpec(
                "approval",
                tool,
                rule.approvers,
                rule.timeout,
                self._labelled(rule.channels),
                None,
                qualname or tool,
                rule.approvals,
                editable,
            )
            self._foreign[key] = (rule, spec)
        return await self._asker.ask(spec, self._render(arguments), context or {})

    def _check_escalations(self, escalate: Sequence[Escalation]) -> tuple[Escalation, ...]:
        escalations = tuple(escalate)
        for escalation in escalations:
            if not isinstance(escalation, Escalation):
                raise ConfigurationError(f"escalate takes Escalation(...) objects, not {escalation!r}")
            self._register(*_check_channels(escalation.channels))
        return tuple(sorted(escalations, key=lambda e: e.after))

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
        limit = None if timeout is None else seconds(timeout, "timeout")

        tool = ToolSpec("question", "contact_human", allowed, limit, checked)

        async def contact_human(message: str) -> str:
            """Ask a human a free-form question and wait for their answer.

            Use it when you need a judgement, a missing fact or a clarification only a
            person can give. The return value is the human's answer, as text.
            """
            decision = await self._asker.ask(tool, {"message": message}, {}, message)
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
        by: str | Principal,
        comment: str | None = None,
        via: str = "api",
        edits: Mapping[str, Any] | None = None,
        grant: float | timedelta | None = None,
        seen: str | None = None,
    ) -> Decision | None:
        """Approve or deny a request; returns the decision that stands.

        The first decision wins: a later one returns the first, unchanged. Raises
        ``UnknownRequest`` for an unknown id and ``NotAnApprover`` when ``by`` is not
        among the request's approvers (the request then stays pending). On a request
        that needs several approvals (``approvals=``) this is ``by``'s vote: it returns
        ``None`` while the request still waits for more (``hl.get(id).votes`` has them).

        ``edits`` change arguments the tool made editable (``editable=``) with the approval:
        the tool runs with them. On a request that needs several approvals, an edit starts
        the count again (the others approved another call); pass ``seen=request.fingerprint``
        of the version you looked at, and an answer to a call edited since raises
        ``ArgumentsEdited`` instead of counting. An edit of an argument that is not editable or is masked,
        or of the wrong type, raises ``InvalidEdit`` naming it; nothing is decided.

        ``grant`` (seconds or a ``timedelta``) approves and allows the same call (every
        unmasked argument equal) for that long without asking: a grant, as ``grant()`` gives.
        On a request that needs several approvals, the grant is given when every approval
        that decides it asked for one (for the shortest time asked).
        """
        allowed = None if grant is None else seconds(grant, "grant")
        answered = await self._engine.decide(
            request_id, approved, by=by, comment=comment, via=via, edits=edits, grant=allowed, seen=seen
        )
        return answered.decision

    async def grant(
        self,
        tool: Callable[..., Any],
        *,
        by: str | Principal,
        expires_in: float | timedelta,
        where: Mapping[str, Any] | None = None,
        max_uses: int | None = None,
    ) -> Grant:
        """Let calls of the gated ``tool`` run without asking, until the grant expires, is used
        ``max_uses`` times, or is revoked; returns the ``Grant``.

        ``where`` limits it to calls whose arguments (as approvers see them: masked ones
        never match) equal each of its values; ``None`` covers every call of the tool. Only
        one who may approve the tool may grant it (``NotAnApprover`` otherwise), and a grant
        needs what a decision would: on a tool that needs two approvals, a second approver
        confirms it (``confirm_grant``) before it covers anything. It never covers a call
        made on behalf of one of its granters. Each covered call is decided ``via="grant"``
        and audited with the grant's id (``current_decision().grant``).
        """
        spec = tool_spec(tool)
        if spec is None or spec.qualname is None:
            raise ConfigurationError(f"grant() takes a tool gated by require_approval, not {tool!r}")
        who = by if isinstance(by, Principal) else Principal(by)
        if spec.approvers and not who.matches(spec.approvers):
            logger.warning("grant.not_an_approver", function=spec.qualname, by=who.id)
            raise NotAnApprover(spec.qualname, who.id, subject="grant")
        checked_where = None if where is None else _check_where(where, spec.parameters, spec.function)
        if max_uses is not None and (
            isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1
        ):
            raise ConfigurationError(f"max_uses must be a positive integer or None, not {max_uses!r}")
        now = datetime.now(UTC)
        return await self._engine.give_grant(
            Grant(
                id=secrets.token_hex(16),
                function=spec.qualname,
                where=checked_where,
                by=(who.id,),
                created_at=now,
                expires_at=now + timedelta(seconds=seconds(expires_in, "expires_in")),
                max_uses=max_uses,
                approvals=spec.approvals,
                approvers=spec.approvers,
                users=(who.user,),
            )
        )

    async def confirm_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Give a grant that needs several approvers (``approvals=``) as one more of them; the
        same person counts once. Raises ``UnknownGrant`` and ``NotAnApprover``."""
        return await self._engine.confirm_grant(grant_id, by=by)

    async def revoke_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Revoke a grant: calls it covered ask a human again, in every process at once.
        ``by`` must be one who may approve its tool. Raises ``UnknownGrant``."""
        return await self._engine.revoke_grant(grant_id, by=by)

    async def grants(self, *, active: bool = True) -> list[Grant]:
        """The live grants (and those waiting for more granters), oldest first; with
        ``active=False`` also the expired, used-up and revoked ones the store keeps."""
        return await self._engine.grants(active=active)

    async def respond(self, request_id: str, text: str, *, by: str | Principal, via: str = "api") -> Decision:
        """Answer a question from ``human_as_tool``; returns the decision that stands."""
        return _standing(await self._engine.respond(request_id, text, by=by, via=via))

    async def cancel(
        self, request_id: str, *, by: str | Principal, reason: str | None = None, via: str = "api"
    ) -> Decision:
        """Withdraw a pending request: its caller gets ``ApprovalDenied`` (status ``cancelled``).

        A cancellation is a decision like any other: ``by`` must be among the request's
        approvers (``NotAnApprover`` otherwise; the request stays pending). The waiting
        program withdrawing its own call (its task cancelled, ``aclose()``) needs no approver.
        """
        return _standing(await self._engine.cancel(request_id, by=by, reason=reason, via=via))

    async def get(self, request_id: str) -> ApprovalRequest:
        """One request, with its decision once decided. Raises ``UnknownRequest``."""
        return await self._engine.get(request_id)

    async def pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ApprovalRequest]:
        """The requests still waiting for a human, oldest first (by creation, ties by id).

        Filters: ``run_id``, ``kind``, ``function`` (the gated function's name or its
        ``module.qualname``), ``older_than`` (created at least that long ago: seconds or a
        ``timedelta``), ``id_prefix``. ``limit=None`` lists every one: with many pending,
        read them a page at a time instead, each page read from the store's indexes::

            page = await hl.pending(function="transfer", limit=100)
            while page:
                ...  # at most 100 requests
                page = await hl.pending(function="transfer", limit=100, after=page[-1].id)

        ``after`` is the last request of the previous page (``UnknownRequest`` once the store
        no longer holds it, pruned); a request decided meanwhile does not shift the pages.
        ``count_pending`` says how many there are in all.
        """
        return await self._engine.pending(
            run_id=run_id,
            kind=kind,
            function=function,
            older_than=older_than,
            id_prefix=id_prefix,
            after=after,
            limit=limit,
        )

    async def count_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
    ) -> int:
        """How many requests ``pending`` with these filters lists, all pages (a count in the
        store: no request is read)."""
        return await self._engine.count_pending(
            run_id=run_id, kind=kind, function=function, older_than=older_than, id_prefix=id_prefix
        )

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
        """Start: open the store (``StoreError`` at once when it cannot be used), the channels,
        the listener and the store follower."""
        await self._runtime.ensure()
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
        if not await self._runtime.aclose():
            return
        with anyio.CancelScope(shield=True):
            for channel in self._all_channels.values():
                await channel.aclose()
            await self._store.aclose()

    def close(self) -> None:
        """Close from sync code: what ``aclose()`` does, then stop the ``blocking()`` thread."""
        if self._bridge.running:
            self._bridge.call(self.aclose)
        self._bridge.close()

    # -- wiring ------------------------------------------------------------------------

    async def _start(self) -> None:
        """The runtime's start: the store, the channels, the listener, the store follower."""
        await self._store.open()
        for channel in list(self._all_channels.values()):
            await self._start_channel(channel)
        if self._listen is not None and (
            self._always_listen
            or self._metrics is not None
            or any(c.routes() for c in self._all_channels.values())
        ):
            from .listener import Listener

            self._listener = Listener(self.asgi_app, *self._listen)
            await self._runtime.start_part("listener", "the listener", self._listener.serve)
            for channel in self._all_channels.values():
                if isinstance(channel, ListenerAware):
                    channel.listening(self._listener.url)
        await self._runtime.start_part("follower", "the store follower", self._engine.follow)

    async def _prepare(self, channels: Sequence[Channel]) -> None:
        """Before a request goes out: the runtime runs, and ``channels`` are started."""
        await self._runtime.ensure()
        for channel in channels:
            if not self._runtime.started(id(channel)):
                await self._start_channel(channel)

    async def _start_channel(self, channel: Channel) -> None:
        self._register(channel)
        part = functools.partial(channel.run, self._engine)
        started = await self._runtime.start_part(id(channel), f"the {channel.name} channel", part)
        if started and self._listener is not None and isinstance(channel, ListenerAware):
            channel.listening(self._listener.url)

    def _wake(self) -> int:
        """Wake every waiting call: a part died, or this ``HumanLayer`` closes."""
        return self._engine.registry.close()


def _tracing(tracing: bool | Any) -> list[Observer]:
    """``tracing=``: no observer (``False``), spans through the global tracer provider
    (``True``), or through the given one."""
    if tracing is False or tracing is None:
        return []
    try:
        from ._tracing import Tracing
    except ImportError as exc:
        raise ConfigurationError(
            "tracing needs opentelemetry-api: pip install 'humanlayer-async[otel]'"
        ) from exc
    return [Tracing(None if tracing is True else tracing)]


def _metrics(metrics: bool | Any, token: str | None) -> Metrics | None:
    """``metrics=``: none (``False``), a registry of this ``HumanLayer``'s own (``True``), or
    the given ``CollectorRegistry``."""
    if metrics is False or metrics is None:
        if token is not None:
            raise ConfigurationError("metrics_token= needs metrics=True (or a CollectorRegistry)")
        return None
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ConfigurationError("metrics_token must be a string of at least 16 characters")
    try:
        from ._metrics import Metrics
    except ImportError as exc:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'humanlayer-async[metrics]'"
        ) from exc
    return Metrics(None if metrics is True else metrics, token=token)


def _ruled(rule: Rule) -> Condition:
    """A ``"when"`` rule as a ``condition`` (the call's bound arguments as keywords)."""

    def condition(**arguments: Any) -> bool:
        return rule.requires(arguments)

    return condition


def _check_mode(mode: str) -> bool:
    """``mode=``: whether the gate is in shadow mode."""
    if mode not in ("enforce", "shadow"):
        raise ConfigurationError(f'mode must be "enforce" or "shadow", not {mode!r}')
    return mode == "shadow"


def _check_on_reject(on_reject: str) -> OnReject:
    if on_reject not in ("raise", "return"):
        raise ConfigurationError(f'on_reject must be "raise" or "return", not {on_reject!r}')
    return cast(OnReject, on_reject)
