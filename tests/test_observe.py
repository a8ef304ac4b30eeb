"""Traces (OpenTelemetry) and metrics (Prometheus): what a team running agents sees of each
approval, read back through the SDK's in-memory span exporter and the listener's /metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from humanlayer_async import ApprovalDenied, ConfigurationError, HumanLayer
from humanlayer_async.channels import BaseChannel, WebChannel
from humanlayer_async.testing import wait_for_pending

from .durable_helpers import ROOT
from .test_escalation import Recorder

pytestmark = pytest.mark.anyio

HOUR = 3600.0


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith(prefix)]


class Broken(BaseChannel):
    name = "pager"

    async def send(self, request: Any) -> str | None:
        raise RuntimeError("pager down")


async def test_an_approval_is_a_span_under_the_tool_span_with_its_delivery_and_run(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("agent")
    team = Recorder("team")
    async with HumanLayer([team, Broken()], listen=None, tracing=provider) as hl:

        @hl.require_approval()
        async def refund(order: str) -> str:
            with tracer.start_as_current_span("bank.refund"):
                return f"refunded {order}"

        async def agent() -> None:
            with tracer.start_as_current_span("agent.tool refund"):
                assert await refund("A-1") == "refunded A-1"

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, True, by="alice@example.com")

    [tool] = named(exporter, "agent.tool")
    [approval] = named(exporter, "humanlayer.approval refund")
    assert approval.parent is not None and approval.parent.span_id == tool.context.span_id
    attributes = dict(approval.attributes or {})
    wait = attributes.pop("humanlayer.wait_seconds")
    assert isinstance(wait, float) and 0 < wait < 10
    assert attributes == {
        "humanlayer.function": "refund",
        "humanlayer.kind": "approval",
        "humanlayer.request_id": request.id,
        "humanlayer.channels": ("team", "pager"),
        "humanlayer.reattached": False,
        "humanlayer.status": "approved",
        "humanlayer.via": "api",
        "humanlayer.decided_by": "alice@example.com",
        "humanlayer.granted": False,
    }
    assert approval.status.status_code is StatusCode.UNSET
    deliveries = {span.name: span for span in named(exporter, "humanlayer.deliver")}
    assert set(deliveries) == {"humanlayer.deliver team", "humanlayer.deliver pager"}
    for delivery in deliveries.values():
        assert delivery.parent is not None and delivery.parent.span_id == approval.context.span_id
    assert deliveries["humanlayer.deliver pager"].status.status_code is StatusCode.ERROR
    [run] = named(exporter, "humanlayer.run refund")
    assert run.parent is not None and run.parent.span_id == approval.context.span_id
    assert (
        run.start_time is not None and approval.end_time is not None and run.start_time >= approval.end_time
    )


async def test_a_denial_and_a_timeout_end_the_span_in_error(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    async with HumanLayer([], listen=None, tracing=provider, on_reject="return") as hl:

        @hl.require_approval()
        async def wipe(disk: str) -> str:
            return f"wiped {disk}"

        @hl.require_approval(timeout=0.2)
        async def reboot(host: str) -> str:
            return f"rebooted {host}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(wipe, "sda")
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, False, by="bob", comment="no")
        assert "expired" in await reboot("db-1")

    [denied] = named(exporter, "humanlayer.approval wipe")
    [expired] = named(exporter, "humanlayer.approval reboot")
    assert (denied.status.status_code, denied.status.description) == (StatusCode.ERROR, "denied")
    assert (expired.status.status_code, expired.status.description) == (StatusCode.ERROR, "timed_out")
    assert dict(expired.attributes or {})["humanlayer.via"] == "timeout"
    assert named(exporter, "humanlayer.run") == []  # neither ran


async def test_a_decision_made_in_another_process_ends_the_span_where_the_call_waits(
    spans: tuple[TracerProvider, InMemorySpanExporter], store_url: str
) -> None:
    provider, exporter = spans
    async with (
        HumanLayer([], store=store_url, listen=None, tracing=provider) as waiting,
        HumanLayer([], store=store_url, listen=None) as deciding,
    ):

        @waiting.require_approval()
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(deploy, "9.1")
            [request] = await wait_for_pending(waiting)
            await deciding.decide(request.id, True, by="carol")
        [approval] = named(exporter, "humanlayer.approval deploy")
        assert dict(approval.attributes or {})["humanlayer.decided_by"] == "carol"


async def test_a_granted_call_is_a_span_that_says_so(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    async with HumanLayer([], listen=None, tracing=provider) as hl:

        @hl.require_approval()
        async def pay(amount: int) -> int:
            return amount

        await hl.grant(pay, by="cfo", expires_in=HOUR)
        assert await pay(5) == 5
    [approval] = named(exporter, "humanlayer.approval pay")
    attributes = dict(approval.attributes or {})
    assert (attributes["humanlayer.granted"], attributes["humanlayer.via"]) == (True, "grant")


# -- metrics -------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition ``text``, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_listener_serves_metrics_of_requests_decisions_waits_failures_and_refusals() -> None:
    web = WebChannel(token="metrics-web-key-0123456789")
    async with (
        HumanLayer([web, Broken()], listen="127.0.0.1:0", metrics=True) as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def refund(order: str) -> str:
            return f"refunded {order}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(refund, "A-1")
            [request] = await wait_for_pending(hl)
            waiting = samples((await client.get("/metrics")).text)
            assert waiting[("humanlayer_pending", (("function", "refund"),))] == 1
            forged = await client.post(f"/approvals/requests/{request.id}", data={"action": "approve"})
            assert forged.status_code == 401
            await hl.decide(request.id, True, by="alice")
        ended = await client.get("/metrics")
        assert ended.headers["content-type"].startswith("text/plain")
        seen = samples(ended.text)
    assert seen[("humanlayer_requests_total", (("function", "refund"), ("kind", "approval")))] == 1
    decided = (("function", "refund"), ("status", "approved"), ("via", "api"))
    assert seen[("humanlayer_decisions_total", decided)] == 1
    assert seen[("humanlayer_pending", (("function", "refund"),))] == 0
    assert seen[("humanlayer_wait_seconds_count", (("function", "refund"), ("status", "approved")))] == 1
    assert seen[("humanlayer_delivery_failures_total", (("channel", "pager"),))] == 1
    route = (("reason", "unauthenticated"), ("route", "/approvals/requests/{request_id}"))
    assert seen[("humanlayer_callbacks_refused_total", route)] == 1
    labels = {label for (_, pairs) in seen for label, _ in pairs}
    assert labels <= {"function", "kind", "status", "via", "channel", "route", "reason", "le"}  # bounded


async def test_a_decision_is_counted_by_the_process_that_stored_it(store_url: str) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    async with (
        HumanLayer([], store=store_url, listen=None, metrics=first) as waiting,
        HumanLayer([], store=store_url, listen=None, metrics=second) as deciding,
    ):

        @waiting.require_approval()
        async def close(account: str) -> str:
            return f"closed {account}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(close, "acme")
            [request] = await wait_for_pending(waiting)
            await deciding.decide(request.id, True, by="dave")
        await waiting.grant(close, by="dave", expires_in=HOUR)
        await close("acme")  # granted: stored here
    labels = {"function": "close", "status": "approved", "via": "api"}
    assert first.get_sample_value("humanlayer_decisions_total", labels) is None
    assert second.get_sample_value("humanlayer_decisions_total", labels) == 1
    assert first.get_sample_value("humanlayer_grants_used_total", {"function": "close"}) == 1
    assert first.get_sample_value("humanlayer_decisions_total", {**labels, "via": "grant"}) == 1
    assert (
        first.get_sample_value("humanlayer_wait_seconds_count", {"function": "close", "status": "approved"})
        == 2
    )


async def test_metrics_are_for_loopback_clients_or_the_token_holder() -> None:
    async with (
        HumanLayer([], listen="127.0.0.1:0", metrics=True, trusted_proxies=["127.0.0.1"]) as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        assert (await client.get("/metrics")).status_code == 200
        remote = await client.get("/metrics", headers={"x-forwarded-for": "203.0.113.9"})
        assert remote.status_code == 403
    token = "prometheus-scrape-token-0123"
    async with (
        HumanLayer([], listen="127.0.0.1:0", metrics=True, metrics_token=token) as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        assert (await client.get("/metrics")).status_code == 403  # even from loopback: the token
        assert (await client.get("/metrics", headers={"authorization": "Bearer wrong"})).status_code == 403
        allowed = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert allowed.status_code == 200 and "humanlayer_pending" in allowed.text


def test_two_instances_have_registries_of_their_own_and_options_are_checked() -> None:
    one, two = HumanLayer([], listen=None, metrics=True), HumanLayer([], listen=None, metrics=True)
    assert one._metrics is not None and two._metrics is not None
    assert one._metrics.registry is not two._metrics.registry
    with pytest.raises(ConfigurationError, match="metrics_token= needs metrics"):
        HumanLayer([], listen=None, metrics_token="prometheus-scrape-token-0123")
    with pytest.raises(ConfigurationError, match="at least 16"):
        HumanLayer([], listen=None, metrics=True, metrics_token="short")


def test_without_tracing_or_metrics_neither_library_is_imported() -> None:
    code = (
        "import sys; from humanlayer_async import HumanLayer; HumanLayer([], listen=None);"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('opentelemetry', 'prometheus_client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_denied_call_raises_as_before_with_tracing(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    async with HumanLayer([], listen=None, tracing=provider) as hl:

        @hl.require_approval()
        async def drop(table: str) -> str:
            return table

        async def call() -> None:
            with pytest.raises(ApprovalDenied):
                await drop("users")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, False, by="bob")
