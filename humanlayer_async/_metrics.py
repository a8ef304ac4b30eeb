"""Prometheus metrics of approvals (``HumanLayer(metrics=True)``, the ``metrics`` extra).

Each ``HumanLayer`` registers its series in a registry of its own (or the one given), so two
in one process never clash. Labels are bounded: function, kind, status, via and channel
names, route templates, and a fixed set of refusal reasons; never request ids or people.
A decision is counted once, by the process that stored it; ``humanlayer_pending`` and
``humanlayer_wait_seconds`` are of the calls waiting in this process. This module imports
``prometheus_client``; nothing else in the package does.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ._models import ApprovalRequest, Decision

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from ._gate import ToolSpec
    from .channels.base import Channel

__all__ = ["REASONS", "WAIT_BUCKETS", "Metrics"]

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
"""Seconds: humans are slow, from a second to a day."""

REASONS = {
    400: "malformed",
    401: "unauthenticated",
    403: "forbidden",
    404: "unknown",
    405: "method",
    408: "slow",
    409: "conflict",
    413: "too_large",
    415: "media_type",
    422: "unreadable",
    429: "rate_limited",
    503: "unavailable",
}
"""The ``reason`` label of a refused callback, by its status (any other: ``other``)."""


class Metrics:
    """The ``Observer`` that counts in a Prometheus ``registry``, and serves it at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, token: str | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._token = token
        into: dict[str, Any] = {"registry": self.registry}
        self._requests = Counter(
            "humanlayer_requests",
            "Requests for a human's answer, by function and kind",
            ["function", "kind"],
            **into,
        )
        self._decisions = Counter(
            "humanlayer_decisions",
            "Decisions stored by this process, by function, status and channel",
            ["function", "status", "via"],
            **into,
        )
        self._pending = Gauge(
            "humanlayer_pending", "Calls waiting for a human in this process", ["function"], **into
        )
        self._wait = Histogram(
            "humanlayer_wait_seconds",
            "How long calls waited for their final state, by function and status",
            ["function", "status"],
            buckets=WAIT_BUCKETS,
            **into,
        )
        self._delivery_failures = Counter(
            "humanlayer_delivery_failures", "Deliveries a channel could not make", ["channel"], **into
        )
        self._refused = Counter(
            "humanlayer_callbacks_refused", "Callbacks the listener refused", ["route", "reason"], **into
        )
        self._grants_used = Counter(
            "humanlayer_grants_used", "Calls a grant let run without asking", ["function"], **into
        )

    # -- the Observer ------------------------------------------------------------------

    async def asking(self, tool: ToolSpec, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        pending = self._pending.labels(tool.function)
        pending.inc()
        started = time.monotonic()
        try:
            decision = await ask()
        finally:
            pending.dec()
        self._wait.labels(tool.function, decision.status.value).observe(time.monotonic() - started)
        return decision

    def requested(self, request: ApprovalRequest, channels: Sequence[Channel], *, attached: bool) -> None:
        if not attached:  # re-attached: an earlier process counted it
            self._requests.labels(request.function, request.kind).inc()

    @contextlib.contextmanager
    def delivering(self, request: ApprovalRequest, channel: Channel) -> Iterator[None]:
        try:
            yield
        except Exception:
            self._delivery_failures.labels(channel.name).inc()
            raise

    def decided(self, function: str, decision: Decision) -> None:
        self._decisions.labels(function, decision.status.value, decision.via).inc()

    def granted(self, function: str) -> None:
        self._grants_used.labels(function).inc()

    def executing(self, function: str, decision: Decision) -> None:
        """Nothing: the tool's run is the application's to measure."""

    def executed(self, function: str, decision: Decision, error: BaseException | None) -> None:
        """Nothing, as ``executing``."""

    def refused(self, route: str, status: int) -> None:
        self._refused.labels(route, REASONS.get(status, "other")).inc()

    # -- GET /metrics ------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        """The metrics in Prometheus' text format: to loopback clients, or (with a token) to
        whoever sends ``Authorization: Bearer <token>``; anyone else gets 403 (``Refused``)."""
        from starlette.responses import Response

        from ._refused import Refused
        from .listener import client_is_local

        if self._token is not None:
            sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(sent.encode(), self._token.encode()):
                raise Refused(403, "metrics need the bearer token")
        elif not client_is_local(request.scope):
            raise Refused(403, "metrics are served to loopback clients only (set metrics_token=)")
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
