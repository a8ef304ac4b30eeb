"""The decorators: condition → request → wait → run or refuse."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, overload

import anyio

from ._audit import logger
from ._codec import loads
from ._edits import editable_schemas
from ._exceptions import ApprovalDenied, ApprovalTimeout, ConfigurationError
from ._models import Decision, Execution, Kind, Status
from ._render import Render

if TYPE_CHECKING:
    from ._schedule import Escalation
    from .channels.base import Channel

__all__ = [
    "Condition",
    "ContextHook",
    "OnReject",
    "ToolSpec",
    "current_decision",
    "edit_note",
    "refusal",
    "tool_spec",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_current_decision: ContextVar[Decision | None] = ContextVar("humanlayer_current_decision", default=None)

OnReject = Literal["raise", "return"]

_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})
Condition = Callable[..., bool | Awaitable[bool]]
"""Gets the call's bound arguments as keywords; true means a human must approve."""
ContextHook = Callable[..., Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
"""Gets the call's bound arguments as keywords; returns what approvers should see."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What every request of one gated tool (or of ``human_as_tool``) shares, made once."""

    kind: Kind
    function: str
    approvers: tuple[str, ...]
    timeout: float | None
    channels: Sequence[Channel] | None
    doc: str | None = None
    qualname: str | None = None
    """The function's ``module.qualname``: part of the re-attach key (``function`` when None)."""
    approvals: int = 1
    """How many distinct approvers must approve a call."""
    editable: Mapping[str, Any] | None = None
    """The JSON Schema of each argument an approver may change (``None``: none)."""
    remind_every: float | None = None
    """Seconds between reminders while a request waits (``None``: no reminders)."""
    escalations: tuple[Escalation, ...] = ()
    """What happens to a request still pending after a while, in order."""
    parameters: frozenset[str] | None = None
    """The names a grant's ``where`` may use (``None``: any, for a tool taking ``**kwargs``)."""
    shadow: bool = False
    """Shadow mode: record what would have been asked, and run the call at once."""


class Asker(Protocol):
    """What the gate needs: open a request, wait for its decision, track the run, block a thread."""

    def block(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the ``HumanLayer``'s event loop and block this (non-loop) thread for it."""
        ...

    async def ask(
        self,
        tool: ToolSpec,
        kwargs: Mapping[str, Any],
        context: Mapping[str, Any],
        message: str | None = None,
    ) -> Decision:
        """Open a request for one call of ``tool`` (its arguments as shown) and wait for the decision."""
        ...

    async def shadow(self, tool: ToolSpec, kwargs: Mapping[str, Any], context: Mapping[str, Any]) -> None:
        """Record that a call of a tool in shadow mode would have asked; never raises."""
        ...

    async def begin_execution(
        self, decision: Decision, tool: ToolSpec, kwargs: Mapping[str, Any]
    ) -> Execution | None:
        """Before an approved call runs: ``None`` to run it now, or an earlier run's recorded result.

        Raises ``AlreadyExecuted`` / ``OutcomeUnknown`` when an earlier run forbids this one.
        """
        ...

    async def finish_execution(
        self, decision: Decision, tool: ToolSpec, error: BaseException | None, result: Any
    ) -> None:
        """After an approved call returned ``result`` or raised ``error``."""
        ...


class Gated(Protocol):
    """``require_approval(...)``: gates a tool and keeps its colour (async stays async, sync stays sync)."""

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...


class GatedOrSentence(Protocol):
    """``require_approval(on_reject="return")``: a refusal comes back as the sentence."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | str]]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R | str]: ...


def current_decision() -> Decision | None:
    """Inside a gated tool, the decision that approved this call (who, via, comment).

    ``None`` outside a gated tool, and in a call whose condition did not require approval.
    """
    return _current_decision.get()


def tool_spec(func: object) -> ToolSpec | None:
    """The spec of a function ``require_approval`` gated (``None`` for any other)."""
    spec = getattr(func, "__humanlayer_tool__", None)
    return spec if isinstance(spec, ToolSpec) else None


def refusal(function: str, decision: Decision) -> ApprovalDenied:
    """The exception for a call that may not run, worded so an LLM can act on it."""
    reason = f": {decision.comment}" if decision.comment else ""
    who = f" by {decision.by}" if decision.by else ""
    if decision.status is Status.TIMED_OUT:
        return ApprovalTimeout(
            f"The request to run {function} expired without an answer from a human, so it did not run. "
            "Do not retry it unasked; tell the user nobody approved it in time.",
            decision,
        )
    if decision.status is Status.CANCELLED:
        text = f"The request to run {function} was cancelled{who} via {decision.via}{reason}."
    else:
        text = f"A human denied {function}{who} via {decision.via}{reason}. It did not run."
    return ApprovalDenied(text, decision)


def edit_note(function: str, edits: Mapping[str, Any]) -> str:
    """What a model is told before the result of a call an approver edited: its own message
    still shows the arguments it asked for (the framework adapters lead the result with it)."""
    changes = ", ".join(f"{name}={json.dumps(value, default=str)}" for name, value in edits.items())
    return f"A human approved {function} with changed arguments ({changes}); its result:"


async def _call_hook(hook: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
    result = hook(**arguments)
    return await result if inspect.isawaitable(result) else result


def _shown_arguments(arguments: Mapping[str, Any], spread: str | None) -> dict[str, Any]:
    """The bound arguments as people see them: ``**kwargs`` spread into their own names.

    A ``render`` hook then sees (and masks) ``api_key`` passed through ``**params`` as
    ``api_key``, not hidden in one argument named ``params``. A keyword that collides with
    a positional-only parameter's name is shown as ``params['name']``.
    """
    shown = {name: value for name, value in arguments.items() if name != spread}
    for name, value in arguments.get(spread, {}).items() if spread is not None else ():
        shown[f"{spread}[{name!r}]" if name in shown else name] = value
    return shown


def _check_hook(hook: object, what: str, tool: str, signature: inspect.Signature) -> None:
    """Refuse, at decoration, a ``condition``/``context`` that could never take the tool's arguments.

    Such a hook would fail on every call, and a failing condition asks a human: the mistake
    would pass for caution. A hook without a signature (some builtins) is not checked.
    """
    if hook is None or (what == "context" and isinstance(hook, Mapping)):
        return
    if not callable(hook):
        kind = "a function of the tool's arguments, or a mapping" if what == "context" else "a function"
        raise ConfigurationError(f"{what} of {tool} must be {kind}, not {hook!r}")
    try:
        hook_signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return
    try:
        hook_signature.bind(**dict.fromkeys(signature.parameters))
    except TypeError as exc:
        names = ", ".join(signature.parameters) or "none"
        raise ConfigurationError(
            f"{what} of {tool} cannot be called with the tool's arguments as keywords "
            f"({names}): {exc}; name them as the tool does, or add **kwargs"
        ) from None


def _binder(signature: inspect.Signature) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]:
    """``signature.bind`` with defaults applied, as a dict in parameter order.

    For the common signature (parameters that may be passed by position or keyword, or
    keyword-only; no ``*args``, ``**kwargs`` or positional-only ones) a call that binds
    cleanly is bound directly, a few times faster; anything else (and every call that
    does not bind: its ``TypeError``) goes through ``inspect``.
    """

    def slow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    parameters = list(signature.parameters.values())
    if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters):
        return slow
    names = tuple(p.name for p in parameters)
    positional = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD)
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}

    def fast(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(positional):
            return slow(args, kwargs)
        arguments = dict(zip(positional, args, strict=False))
        if len(arguments) == len(names):
            return arguments if not kwargs else slow(args, kwargs)
        for keyword, value in kwargs.items():
            if keyword in arguments or keyword not in signature.parameters:
                return slow(args, kwargs)
            arguments[keyword] = value
        bound = {}
        for name in names:
            if name in arguments:
                bound[name] = arguments[name]
            elif name in defaults:
                bound[name] = defaults[name]
            else:
                return slow(args, kwargs)  # a missing argument: inspect's TypeError
        return bound

    return fast


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )


_Shown = tuple[Mapping[str, Any], Mapping[str, Any]]
"""A call's arguments as people see them, and its context."""


class _Done:
    """What a gated call returns without running the tool: a refusal's sentence, a recorded result."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def gate(
    asker: Asker,
    func: Callable[..., Any],
    *,
    condition: Condition | None,
    context: ContextHook | Mapping[str, Any] | None,
    render: Render,
    channels: Sequence[Channel] | None,
    approvers: tuple[str, ...],
    approvals: int,
    editable: bool | Sequence[str],
    remind_every: float | None,
    escalate: tuple[Escalation, ...],
    timeout: float | None,
    on_reject: OnReject,
    shadow: bool = False,
) -> Callable[..., Any]:
    """Wrap ``func`` so that a call runs only after a human approves it (when ``condition`` holds).

    The wrapper has the tool's colour: an ``async def`` stays a coroutine function; a plain
    ``def`` stays a plain function that blocks its thread until the call is decided, then
    runs the tool in that thread.
    """
    signature = inspect.signature(func)
    name = getattr(func, "__name__", None) or repr(func)
    qualname = f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', name)}"
    doc = inspect.getdoc(func)
    _check_hook(condition, "condition", name, signature)
    _check_hook(context, "context", name, signature)
    spread = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    bind = _binder(signature)

    async def needs_approval(arguments: Mapping[str, Any]) -> bool:
        if condition is None:
            return True
        try:
            return bool(await _call_hook(condition, arguments))
        except Exception as exc:  # fail closed: a broken condition asks a human
            logger.warning("approval.condition_failed", function=name, error=repr(exc))
            return True

    async def describe(arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        if context is None:
            return _NO_CONTEXT
        if isinstance(context, Mapping):
            return context
        try:
            described = await _call_hook(context, arguments)
        except Exception as exc:
            logger.warning("approval.context_failed", function=name, error=repr(exc))
            return {"context_error": f"the context hook raised {type(exc).__name__}"}
        return described if isinstance(described, Mapping) else {"context": described}

    schemas = editable_schemas(func, editable) or None
    tool = ToolSpec(
        "approval",
        name,
        approvers,
        timeout,
        channels,
        doc,
        qualname,
        approvals,
        schemas,
        remind_every,
        escalate,
        None if spread is not None else frozenset(signature.parameters),
        shadow,
    )

    def edited_call(decision: Decision, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The tool's keyword arguments with the approver's edits (editable ones are keywords)."""
        arguments = {**bind(args, kwargs), **(decision.edits or {})}
        spread_values = arguments.pop(spread, {}) if spread is not None else {}
        return {**arguments, **spread_values}

    async def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Shown | None:
        """What approvers see of this call, or ``None`` when it may run without asking."""
        arguments = bind(args, kwargs)
        if condition is not None and not await needs_approval(arguments):
            return None
        shown = render(arguments if spread is None else _shown_arguments(arguments, spread))
        return shown, _NO_CONTEXT if context is None else await describe(arguments)

    async def permit(decision: Decision, shown: Mapping[str, Any]) -> Decision | _Done:
        """Once decided: the refusal, an earlier run's recorded result, or this call's claim to run."""
        if not decision.approved:
            denied = refusal(name, decision)
            if on_reject == "return":
                return _Done(str(denied))
            raise denied
        if decision.edits:  # the approved call is the edited one
            shown = {**shown, **decision.edits}
        earlier = await asker.begin_execution(decision, tool, shown)
        if earlier is not None and earlier.result is not None:
            return _Done(loads(earlier.result))  # a replayed call: the recorded result, not a second run
        return decision

    # While a call waits, only the gated function's frame and the engine's are on its stack
    # (memory per pending call is a feature): prepare and permit run before and after.

    if _is_async(func):

        @functools.wraps(func)
        async def gated(*args: Any, **kwargs: Any) -> Any:
            call = await prepare(args, kwargs)
            if call is None:
                return await func(*args, **kwargs)
            if shadow:  # what would have been asked is recorded; the call runs as it is
                await asker.shadow(tool, *call)
                return await func(*args, **kwargs)
            decision = await permit(await asker.ask(tool, *call), call[0])
            if isinstance(decision, _Done):
                return decision.value
            token = _current_decision.set(decision)
            try:
                if decision.edits:
                    result = await func(**edited_call(decision, args, kwargs))
                else:
                    result = await func(*args, **kwargs)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await asker.finish_execution(decision, tool, exc, None)
                raise
            finally:
                _current_decision.reset(token)
            await asker.finish_execution(decision, tool, None, result)
            return result

        gated.__humanlayer_tool__ = tool  # type: ignore[attr-defined]  # what tool_spec() reads
        return gated

    async def approve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decision | _Done | None:
        call = await prepare(args, kwargs)
        if call is None:
            return None
        if shadow:
            await asker.shadow(tool, *call)
            return None
        return await permit(await asker.ask(tool, *call), call[0])

    @functools.wraps(func)
    def gated_sync(*args: Any, **kwargs: Any) -> Any:
        decision = asker.block(functools.partial(approve, args, kwargs))
        if decision is None:
            return func(*args, **kwargs)
        if isinstance(decision, _Done):
            return decision.value
        token = _current_decision.set(decision)
        try:
            result = func(**edited_call(decision, args, kwargs)) if decision.edits else func(*args, **kwargs)
        except BaseException as exc:
            asker.block(functools.partial(asker.finish_execution, decision, tool, exc, None))
            raise
        finally:
            _current_decision.reset(token)
        asker.block(functools.partial(asker.finish_execution, decision, tool, None, result))
        return result

    gated_sync.__humanlayer_tool__ = tool  # type: ignore[attr-defined]
    return gated_sync
