"""Observers: what traces (OpenTelemetry) and metrics (Prometheus) see of each approval.

The engine tells an ``Observer`` each step of a request: the wait from the gated call to its
final state (``asking`` wraps it, so a span can be current for everything done meanwhile),
the request stored or re-attached, each delivery, each decision this process stores, a grant
used, the approved tool's run, and each refused callback. ``HumanLayer(tracing=...,
metrics=...)`` builds them (``_tracing``, ``_metrics``); with neither, the engine has no
observer and each hook is skipped by one ``is None`` check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from ._models import ApprovalRequest, Decision

if TYPE_CHECKING:
    from ._gate import ToolSpec
    from .channels.base import Channel

__all__ = ["Observer", "Observers"]


class Observer(Protocol):
    """Hooks the engine calls; each must be cheap and must not raise."""

    async def asking(self, tool: ToolSpec, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        """Wrap one gated call's wait for a human (``await ask()``), from the call to its final
        state; what ``ask`` raises goes through."""
        ...

    def requested(self, request: ApprovalRequest, channels: Sequence[Channel], *, attached: bool) -> None:
        """Inside ``asking``: the call's request is stored (or, ``attached``, found stored by
        an earlier process of its run)."""
        ...

    def delivering(self, request: ApprovalRequest, channel: Channel) -> AbstractContextManager[None]:
        """Around one delivery; an exception leaving it is the delivery's failure."""
        ...

    def decided(self, function: str, decision: Decision) -> None:
        """This process stored ``decision`` (each decision is stored once, by one process)."""
        ...

    def granted(self, function: str) -> None:
        """A grant let a call of ``function`` run without asking."""
        ...

    def executing(self, function: str, decision: Decision) -> None:
        """The approved call of ``decision`` starts to run (a sync tool's in another thread)."""
        ...

    def executed(self, function: str, decision: Decision, error: BaseException | None) -> None:
        """It returned, or raised ``error``."""
        ...

    def refused(self, route: str, status: int) -> None:
        """The listener refused a callback on ``route`` (a route template) with ``status``."""
        ...


class Observers:
    """Several observers as one, each told in turn (the first given wraps the others)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    async def asking(self, tool: ToolSpec, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        for observer in reversed(self._observers):
            ask = _wrapped(observer, tool, ask)
        return await ask()

    def requested(self, request: ApprovalRequest, channels: Sequence[Channel], *, attached: bool) -> None:
        for observer in self._observers:
            observer.requested(request, channels, attached=attached)

    @contextlib.contextmanager
    def delivering(self, request: ApprovalRequest, channel: Channel) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self._observers:
                stack.enter_context(observer.delivering(request, channel))
            yield

    def decided(self, function: str, decision: Decision) -> None:
        for observer in self._observers:
            observer.decided(function, decision)

    def granted(self, function: str) -> None:
        for observer in self._observers:
            observer.granted(function)

    def executing(self, function: str, decision: Decision) -> None:
        for observer in self._observers:
            observer.executing(function, decision)

    def executed(self, function: str, decision: Decision, error: BaseException | None) -> None:
        for observer in reversed(self._observers):
            observer.executed(function, decision, error)

    def refused(self, route: str, status: int) -> None:
        for observer in self._observers:
            observer.refused(route, status)


def _wrapped(
    observer: Observer, tool: ToolSpec, ask: Callable[[], Awaitable[Decision]]
) -> Callable[[], Awaitable[Decision]]:
    def run() -> Awaitable[Decision]:
        return observer.asking(tool, ask)

    return run
