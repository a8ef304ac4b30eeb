"""OpenTelemetry traces of approvals (``HumanLayer(tracing=True)``, the ``otel`` extra).

Each gated call that asks a human is a span ``humanlayer.approval <function>``, a child of
the span current when the tool was called (an agent framework's tool span), from the call to
the request's final state. Each delivery is a child span ``humanlayer.deliver <channel>``,
and the approved tool's run one more, ``humanlayer.run <function>``. A decision made in
another process (a shared store) ends the span in the process that waits, when it hears of it.

Attributes are ``humanlayer.*`` (function, request_id, kind, status, channels, decided_by,
via, wait_seconds, reattached, granted). A call that does not run (denied, timed out,
cancelled, failed) ends with status ``ERROR`` and the status as its description; an
exception leaving the wait is recorded on the span. This module imports ``opentelemetry``;
nothing else in the package does, so without ``tracing`` nothing is imported.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode

from ._models import ApprovalRequest, Decision, Status

if TYPE_CHECKING:
    from ._gate import ToolSpec
    from .channels.base import Channel

__all__ = ["Tracing"]

_REMEMBERED = 10_000
"""Approved calls whose run has not started yet, kept to parent their run's span."""


class Tracing:
    """The ``Observer`` that records spans through ``provider`` (default: the global one)."""

    def __init__(self, provider: Any = None) -> None:
        from . import __version__

        source = trace if provider is None else provider
        self._tracer = source.get_tracer("humanlayer_async", __version__)
        self._approved: OrderedDict[str, Context] = OrderedDict()  # request id → its approval span
        self._running: dict[str, Span] = {}

    async def asking(self, tool: ToolSpec, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        attributes = {"humanlayer.function": tool.function, "humanlayer.kind": tool.kind}
        with self._tracer.start_as_current_span(
            f"humanlayer.approval {tool.function}", kind=SpanKind.INTERNAL, attributes=attributes
        ) as span:
            started = time.monotonic()
            decision = await ask()
            span.set_attributes(
                {
                    "humanlayer.status": decision.status.value,
                    "humanlayer.via": decision.via,
                    "humanlayer.wait_seconds": time.monotonic() - started,
                    "humanlayer.granted": decision.grant is not None,
                }
            )
            if decision.by is not None:
                span.set_attribute("humanlayer.decided_by", decision.by)
            if decision.status is Status.APPROVED:
                self._approved[decision.request_id] = trace.set_span_in_context(span)
                while len(self._approved) > _REMEMBERED:
                    self._approved.popitem(last=False)
            else:
                span.set_status(StatusCode.ERROR, decision.status.value)
            return decision

    def requested(self, request: ApprovalRequest, channels: Sequence[Channel], *, attached: bool) -> None:
        span = trace.get_current_span()  # the approval's: ``asking`` made it current
        span.set_attributes(
            {
                "humanlayer.request_id": request.id,
                "humanlayer.channels": [channel.name for channel in channels],
                "humanlayer.reattached": attached,
            }
        )

    @contextlib.contextmanager
    def delivering(self, request: ApprovalRequest, channel: Channel) -> Iterator[None]:
        attributes = {"humanlayer.channel": channel.name, "humanlayer.request_id": request.id}
        with self._tracer.start_as_current_span(f"humanlayer.deliver {channel.name}", attributes=attributes):
            yield

    def decided(self, function: str, decision: Decision) -> None:
        """Nothing: the waiting call's span says how it ended."""

    def granted(self, function: str) -> None:
        """Nothing: the span says ``humanlayer.granted``."""

    def executing(self, function: str, decision: Decision) -> None:
        parent = self._approved.pop(decision.request_id, None)
        attributes = {"humanlayer.function": function, "humanlayer.request_id": decision.request_id}
        self._running[decision.request_id] = self._tracer.start_span(
            f"humanlayer.run {function}", context=parent, attributes=attributes
        )

    def executed(self, function: str, decision: Decision, error: BaseException | None) -> None:
        span = self._running.pop(decision.request_id, None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, type(error).__name__)
        span.end()

    def refused(self, route: str, status: int) -> None:
        """Nothing: a refused callback belongs to no approval's span."""
