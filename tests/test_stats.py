"""Per-tool approval stats: the computation over hand-made audit entries, then
``humanlayer-async stats`` and the web console's stats page over real decisions."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from humanlayer_async import ApprovalDenied, ApprovalTimeout, ChannelError, HumanLayer
from humanlayer_async._audit import AuditEntry, AuditEvent
from humanlayer_async._durations import parse_since
from humanlayer_async._stats import (
    HEADERS,
    ApproverCount,
    ToolStats,
    cells,
    describe_wait,
    percentile,
    tool_stats,
)
from humanlayer_async.channels import BaseChannel, WebChannel
from humanlayer_async.stores import store_from_url
from humanlayer_async.testing import wait_for_pending

from .conftest import Outcomes, make_request
from .durable_helpers import run_cli
from .test_web import ALICE, KEY, refusals, signed_in

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def entry(event: str, request_id: str, second: float, **fields: Any) -> AuditEntry:
    """An audit entry ``second`` seconds after ``T0``."""
    return AuditEntry(cast(AuditEvent, event), request_id, T0 + timedelta(seconds=second), fields)


def requested(request_id: str, second: float, function: str = "pay", kind: str = "approval") -> AuditEntry:
    return entry("approval.requested", request_id, second, function=function, kind=kind, kwargs={})


def decided(
    request_id: str, second: float, by: str | None, *, approved: bool = True, via: str = "slack"
) -> AuditEntry:
    status = "approved" if approved else "denied"
    return entry("approval.decided", request_id, second, status=status, by=by, via=via, comment=None)


def settled(event: str, request_id: str, second: float, status: str) -> AuditEntry:
    return entry(event, request_id, second, status=status, by=None, via="timeout", comment=None)


def voted(request_id: str, second: float, by: str, approved: bool = True) -> AuditEntry:
    return entry("approval.voted", request_id, second, by=by, approved=approved, via="web")


def shadowed(function: str, second: float) -> AuditEntry:
    return entry("approval.shadowed", f"s{second}", second, function=function, kwargs={})


# -- the computation, over hand-made entries ------------------------------------------------


def test_every_outcome_is_counted_under_its_tool_with_waits_for_people_only() -> None:
    entries = [
        decided("old", 0, "ann"),  # its request was made before the window: left out
        requested("r1", 0),
        requested("r2", 10),
        requested("r3", 20),
        requested("r4", 30),
        requested("r5", 40),
        requested("r6", 50),
        requested("r7", 60),
        requested("r8", 70),
        decided("r1", 12, "ann"),  # waited 12 s
        decided("r2", 40, "bob", approved=False),  # 30 s
        decided("r3", 20, "ann", via="grant"),  # a grant: no wait, no approver
        settled("approval.timed_out", "r4", 630, "timed_out"),
        entry("approval.cancelled", "r5", 45, status="cancelled", by="ann", via="cli", comment="dup"),
        settled("approval.failed", "r6", 50, "failed"),
        decided("r7", 160, "Ann@Example.com"),  # 100 s
        decided("r7", 170, "bob"),  # a second outcome: the first stands
        requested("q1", 80, "contact_human", "question"),
        decided("q1", 88, "cfo"),
        shadowed("pay", 90),
        shadowed("pay", 91),
        shadowed("restart", 92),  # only shadowed: a row of its own
    ]
    question, pay, restart = tool_stats(entries)
    assert pay == ToolStats(
        function="pay",
        requests=8,
        approved=2,
        denied=1,
        timed_out=1,
        cancelled=1,
        failed=1,
        granted=1,
        pending=1,  # r8
        approval_rate=2 / 3,
        median_wait_seconds=30.0,
        p95_wait_seconds=100.0,
        top_approvers=(ApproverCount("Ann@Example.com", 1), ApproverCount("ann", 1), ApproverCount("bob", 1)),
        shadowed=2,
    )
    assert (question.function, question.requests, question.approved, question.median_wait_seconds) == (
        "contact_human",
        1,
        1,
        8.0,
    )
    assert question.top_approvers == (ApproverCount("cfo", 1),)
    assert restart == ToolStats("restart", 0, 0, 0, 0, 0, 0, 0, 0, None, None, None, (), 1)


def test_no_decision_one_decision_and_votes() -> None:
    [waiting] = tool_stats([requested("r1", 0), requested("r2", 5)])
    assert (waiting.requests, waiting.pending, waiting.approval_rate) == (2, 2, None)
    assert (waiting.median_wait_seconds, waiting.p95_wait_seconds, waiting.top_approvers) == (None, None, ())

    [granted_only] = tool_stats([requested("r1", 0), decided("r1", 0, "ann", via="grant")])
    assert (granted_only.granted, granted_only.approval_rate, granted_only.median_wait_seconds) == (
        1,
        None,
        None,
    )

    [one] = tool_stats([requested("r1", 0), decided("r1", 7.5, "ann", approved=False)])
    assert (one.denied, one.approval_rate) == (1, 0.0)
    assert one.median_wait_seconds == one.p95_wait_seconds == 7.5

    # Two approvals needed: each voter answered it once (the last voter's decision is not a
    # second answer); an email address in another case is the same person; a voter on a
    # request that then timed out answered it too.
    [quorum] = tool_stats(
        [
            requested("r1", 0),
            requested("r2", 0),
            requested("r3", 0),
            voted("r1", 5, "ann@example.com"),
            voted("r1", 9, "bob"),
            decided("r1", 9, "bob"),
            voted("r2", 3, "ANN@example.com", approved=False),
            decided("r2", 3, "ANN@example.com", approved=False),
            voted("r3", 4, "cfo"),
            settled("approval.timed_out", "r3", 600, "timed_out"),
        ]
    )
    assert (quorum.approved, quorum.denied, quorum.timed_out) == (1, 1, 1)
    assert quorum.top_approvers == (
        ApproverCount("ann@example.com", 2),
        ApproverCount("bob", 1),
        ApproverCount("cfo", 1),
    )
    assert (quorum.median_wait_seconds, quorum.p95_wait_seconds) == (6.0, 9.0)


def test_top_approvers_are_three_at_most_by_count_then_name() -> None:
    people = ["dan", "cat", "bob", "cat", "ann", "dan", "eve", "cat"]
    entries = [requested(f"r{i}", 0) for i in range(len(people))]
    entries += [decided(f"r{i}", 1, name) for i, name in enumerate(people)]
    [stats] = tool_stats(entries)
    assert stats.top_approvers == (ApproverCount("cat", 3), ApproverCount("dan", 2), ApproverCount("ann", 1))


def test_the_95th_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([9.0, 1.0], 95) == 9.0  # rank ⌈1.9⌉ = 2
    nineteen = [float(n) for n in range(19, 0, -1)]  # 19 .. 1, unsorted on purpose
    assert percentile(nineteen, 95) == 19.0  # rank ⌈18.05⌉ = 19: fewer than 20, the largest
    assert percentile([float(n) for n in range(1, 21)], 95) == 19.0  # rank 19 of 20
    assert percentile([float(n) for n in range(1, 22)], 95) == 20.0  # rank ⌈19.95⌉ = 20
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0  # nearest rank never interpolates


def test_a_row_for_people_escapes_nothing_itself_and_says_dash_for_no_value() -> None:
    stats = ToolStats(
        "wire\x1b[2J",
        3,
        2,
        1,
        0,
        0,
        0,
        0,
        0,
        2 / 3,
        0.4,
        5400.0,
        (ApproverCount("ann", 2), ApproverCount("bob", 1)),
        4,
    )
    assert len(cells(stats)) == len(HEADERS)
    assert cells(stats) == (
        "wire\x1b[2J",  # raw: the table (terminal) and the page (HTML) escape it their way
        *("3", "2", "1", "0", "0", "0", "0", "0"),
        "67%",
        "0.4 s",
        "1.5 h",
        "4",
        "ann (2), bob (1)",
    )
    empty = ToolStats("tag", 0, 0, 0, 0, 0, 0, 0, 0, None, None, None, (), 1)
    assert cells(empty)[9:] == ("-", "-", "-", "1", "-")
    assert [describe_wait(s) for s in (59.94, 60, 3599, 86400 * 1.5)] == [
        "59.9 s",
        "1.0 min",
        "60.0 min",
        "1.5 d",
    ]


def test_since_is_a_duration_back_or_an_iso_time() -> None:
    now = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == datetime(2026, 3, 8, 11, 58, 30, tzinfo=UTC)
    assert parse_since("1.5h", now) == datetime(2026, 3, 8, 10, 30, tzinfo=UTC)
    assert parse_since("2026-03-01T08:00:00") == datetime(2026, 3, 1, 8, 0, tzinfo=UTC)  # UTC unless said
    assert parse_since("2026-03-01T08:00:00+02:00") == datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    for bad, says in (
        ("yesterday", "'yesterday' is neither a duration (15m, 2h, 7d) nor an ISO 8601 time"),
        ("", "neither a duration"),
        ("-7d", "neither a duration"),
        ("99999999999d", "'99999999999d' is longer than a duration can be"),
        ("999999d", "'999999d' reaches back before any date"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_since(bad, now)


# -- humanlayer-async stats, after real decisions on a durable store ------------------------

HOSTILE_TOOL = "wire\x1b[2J\u202eevil"
HOSTILE_TOOL_SHOWN = "wire\\x1b[2J\\u202eevil"
HOSTILE_BY = "mal\x1b[31mlory"
RAW = ("\x1b", "\u202e")
KEYS = {
    "function",
    "requests",
    "approved",
    "denied",
    "timed_out",
    "cancelled",
    "failed",
    "granted",
    "pending",
    "approval_rate",
    "median_wait_seconds",
    "p95_wait_seconds",
    "top_approvers",
    "shadowed",
}
WAIT = re.compile(r"\d+\.\d (s|min)")


class Down(BaseChannel):
    """A channel that cannot deliver anything."""

    name = "pager"

    async def send(self, request: Any) -> str | None:
        raise ChannelError("the pager is down")


def table_rows(out: str) -> list[list[str]]:
    """The cells of each line of a table (columns are two or more spaces apart)."""
    return [re.split(r" {2,}", line) for line in out.splitlines()]


def without_waits(rows: Sequence[list[str]]) -> list[list[str]]:
    """Rows with each wait (wall-clock: it varies) checked for form and replaced by ``WAIT``."""
    median, p95 = HEADERS.index("MEDIAN WAIT"), HEADERS.index("P95 WAIT")
    for row in rows:
        for column in (median, p95):
            assert row[column] == "-" or WAIT.fullmatch(row[column]), row
            row[column] = "WAIT" if row[column] != "-" else "-"
    return list(rows)


async def make_decisions(url: str) -> None:
    """Requests of several tools decided every way there is, through a ``HumanLayer``."""
    hl = HumanLayer([], store=url, listen=None)

    @hl.require_approval()
    async def pay(amount: int) -> str:
        return f"paid {amount}"

    @hl.require_approval(timeout=0.2)
    async def slow() -> str:
        return "ran"

    @hl.require_approval(approvals=2)
    async def deploy(version: str) -> str:
        return f"deployed {version}"

    @hl.require_approval(channels=[Down()])
    async def page_oncall() -> str:
        return "paged"

    @hl.require_approval(mode="shadow")
    async def tag(name: str) -> str:
        return f"tagged {name}"

    async def wire() -> str:
        return "wired"

    wire.__name__ = HOSTILE_TOOL
    hostile = hl.require_approval()(wire)
    ask = hl.human_as_tool()

    async with hl, anyio.create_task_group() as task_group:
        calls = Outcomes(task_group)
        for amount, by, approved in ((1, "ann", True), (2, "bob", False), (3, "ann", True)):
            calls.start(functools.partial(pay, amount))
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, approved, by=by, comment=None if approved else "no")
        calls.start(lambda: pay(5))
        [request] = await wait_for_pending(hl)
        await hl.cancel(request.id, by="ann", reason="duplicate")  # a cancellation answers nothing
        await hl.grant(pay, by="ann", expires_in=60, where={"amount": 4})
        assert await pay(4) == "paid 4"  # granted: nobody is asked

        with pytest.raises(ApprovalTimeout):
            await slow()
        with pytest.raises(ChannelError):
            await page_oncall()

        calls.start(lambda: deploy("v2"))
        [request] = await wait_for_pending(hl)
        assert await hl.decide(request.id, True, by="ann") is None  # a vote: one more is needed
        assert (await hl.decide(request.id, True, by="bob")) is not None

        calls.start(hostile)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, True, by=HOSTILE_BY)

        calls.start(lambda: ask("Which vendor?"))
        [request] = await wait_for_pending(hl)
        await hl.respond(request.id, "ACME", by="cfo")

        assert [await tag("a"), await tag("b")] == ["tagged a", "tagged b"]
    ran = sorted(outcome for outcome in calls.ended if isinstance(outcome, str))
    assert ran == ["ACME", "deployed v2", "paid 1", "paid 3", "wired"]
    refused = [outcome for outcome in calls.ended if isinstance(outcome, ApprovalDenied)]
    assert sorted(outcome.decision.status.value for outcome in refused) == ["cancelled", "denied"]


async def test_stats_counts_each_tools_outcomes_escaped_and_as_json(store_url: str) -> None:
    await make_decisions(store_url)
    store = store_from_url(store_url)
    try:
        await store.create(make_request("pending0" + "0" * 24, approvers=()))  # transfer: still pending
        # A call shadowed ten days ago: outside the default window (7 days).
        ten_days_ago = datetime.now(UTC) - timedelta(days=10)
        await store.record(
            AuditEntry("approval.shadowed", "s" * 32, ten_days_ago, {"function": "old_tool", "kwargs": {}})
        )
    finally:
        await store.aclose()

    code, out, err = await run_cli("stats", "--store", store_url)
    assert code == 0 and err == "" and not [raw for raw in RAW if raw in out]
    header, *rows = table_rows(out)
    assert header == list(HEADERS)
    assert without_waits(rows) == [
        ["contact_human", "1", "1", "0", "0", "0", "0", "0", "0", "100%", "WAIT", "WAIT", "0", "cfo (1)"],
        ["deploy", "1", "1", "0", "0", "0", "0", "0", "0", "100%", "WAIT", "WAIT", "0", "ann (1), bob (1)"],
        ["page_oncall", "1", "0", "0", "0", "0", "1", "0", "0", "-", "-", "-", "0", "-"],
        ["pay", "5", "2", "1", "0", "1", "0", "1", "0", "67%", "WAIT", "WAIT", "0", "ann (2), bob (1)"],
        ["slow", "1", "0", "0", "1", "0", "0", "0", "0", "-", "-", "-", "0", "-"],
        ["tag", "0", "0", "0", "0", "0", "0", "0", "0", "-", "-", "-", "2", "-"],
        ["transfer", "1", "0", "0", "0", "0", "0", "0", "1", "-", "-", "-", "0", "-"],
        [
            HOSTILE_TOOL_SHOWN,
            "1",
            "1",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "100%",
            "WAIT",
            "WAIT",
            "0",
            "mal\\x1b[31mlory (1)",
        ],
    ]

    code, out, _ = await run_cli("stats", "--json", "--store", store_url)
    assert code == 0 and not [raw for raw in RAW if raw in out]  # ASCII JSON: escapes, not raw bytes
    listed = json.loads(out)
    assert all(set(item) == KEYS for item in listed)
    by_tool = {item["function"]: item for item in listed}
    assert list(by_tool) == [
        "contact_human",
        "deploy",
        "page_oncall",
        "pay",
        "slow",
        "tag",
        "transfer",
        HOSTILE_TOOL,  # JSON stays JSON: the name as it is
    ]
    pay = by_tool["pay"]
    assert {key: pay[key] for key in KEYS - {"median_wait_seconds", "p95_wait_seconds"}} == {
        "function": "pay",
        "requests": 5,
        "approved": 2,
        "denied": 1,
        "timed_out": 0,
        "cancelled": 1,
        "failed": 0,
        "granted": 1,
        "pending": 0,
        "approval_rate": pytest.approx(2 / 3),
        "top_approvers": [{"by": "ann", "count": 2}, {"by": "bob", "count": 1}],
        "shadowed": 0,
    }
    assert 0 < pay["median_wait_seconds"] <= pay["p95_wait_seconds"] < 10
    assert by_tool["slow"]["median_wait_seconds"] is None  # a timeout is no wait for a person
    assert by_tool[HOSTILE_TOOL]["top_approvers"] == [{"by": HOSTILE_BY, "count": 1}]

    code, out, _ = await run_cli("stats", "--since", "30d", "--json", "--store", store_url)
    assert code == 0 and [item["shadowed"] for item in json.loads(out) if item["function"] == "old_tool"] == [
        1
    ]
    code, out, _ = await run_cli("stats", "--since", "2999-01-01T00:00:00", "--store", store_url)
    assert code == 0 and out == "nothing was asked since 2999-01-01 00:00:00 UTC\n"
    code, out, _ = await run_cli("stats", "--since", "2999-01-01T00:00:00", "--json", "--store", store_url)
    assert code == 0 and json.loads(out) == []
    code, _, err = await run_cli("stats", "--since", "last week", "--store", store_url)
    assert code == 2 and "'last week' is neither a duration (15m, 2h, 7d) nor an ISO 8601 time" in err


# -- the web console's stats page --------------------------------------------------------

HTML_TOOL = "<b>wire</b>\x1b[2J\u202e"
HTML_TOOL_SHOWN = "&lt;b&gt;wire&lt;/b&gt;\\x1b[2J\\u202e"


async def test_the_stats_page_shows_the_table_escaped_to_signed_in_users_only() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        async def wire(amount: int) -> str:
            return "wired"

        wire.__name__ = HTML_TOOL
        hostile = hl.require_approval()(wire)

        @hl.require_approval(mode="shadow")
        async def tag(name: str) -> str:
            return name

        async with anyio.create_task_group() as task_group, httpx.AsyncClient() as client:
            calls = Outcomes(task_group)
            calls.start(lambda: hostile(5))
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, False, by="<i>mallory</i>\u202e", comment="no")
            await tag("v1")

            with capture_logs() as logs:
                outside = await client.get(f"{web.url}/stats")
            assert outside.status_code == 401 and 'action="/approvals/sign-in"' in outside.text
            assert refusals(logs) == [(401, "no session")]

            await signed_in(client, web)
            main = (await client.get(str(web.url))).text
            assert '<a href="/approvals/grants">Grants</a> ·\n<a href="/approvals/stats">Stats</a>' in main

            page = await client.get(f"{web.url}/stats")
            assert page.status_code == 200
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            html = page.text
            assert not [raw for raw in (*RAW, "<b>", "<i>") if raw in html]
            rows = re.findall(r"<tr>(.*?)</tr>", html)
            cells_of = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in rows]
            assert cells_of[0] == [header.capitalize() for header in HEADERS]
            assert cells_of[1][0] == f"<code>{HTML_TOOL_SHOWN}</code>"
            assert cells_of[1][1:4] == ["1", "0", "1"]  # one request, denied
            assert cells_of[1][9] == "0%" and WAIT.fullmatch(cells_of[1][10])
            assert cells_of[1][-1] == "&lt;i&gt;mallory&lt;/i&gt;\\u202e (1)"
            assert cells_of[2][0] == "<code>tag</code>" and cells_of[2][-2:] == ["1", "-"]
            assert 'name="since" type="text" value="7d"' in html

            later = await client.get(f"{web.url}/stats", params={"since": "2999-01-01T00:00:00"})
            assert later.status_code == 200 and "<table" not in later.text
            assert "Nothing was asked since 2999-01-01 00:00:00 UTC." in later.text
            assert 'value="2999-01-01T00:00:00"' in later.text

            with capture_logs() as logs:
                bad = [
                    await client.get(f"{web.url}/stats", params={"since": since})
                    for since in ("<script>alert(1)</script>", "99999999999d", "999999d", "")
                ]
                wrong_method = await client.post(f"{web.url}/stats")
            assert [response.status_code for response in bad] == [400] * 4
            assert "&#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27; is neither a duration" in bad[0].text
            assert "<script>" not in bad[0].text and 'href="/approvals/stats"' in bad[0].text
            assert "is longer than a duration can be" in bad[1].text
            assert "reaches back before any date" in bad[2].text
            assert wrong_method.status_code == 405
            assert refusals(logs) == [(400, "malformed since")] * 4 + [(405, "method not allowed")]

            async with httpx.AsyncClient() as script:  # a Bearer key, as for every page
                by_key = await script.get(f"{web.url}/stats", headers={"authorization": f"Bearer {KEY}"})
            assert by_key.status_code == 200 and HTML_TOOL_SHOWN in by_key.text
        [denied] = calls.ended
        assert isinstance(denied, ApprovalDenied) and denied.decision.status.value == "denied"


async def test_a_named_users_stats_page_says_who_is_signed_in() -> None:
    web = WebChannel(users={"alice": ALICE})
    async with HumanLayer([web], listen="127.0.0.1:0"), httpx.AsyncClient() as client:
        await signed_in(client, web, user="alice")
        page = await client.get(f"{web.url}/stats")
        assert page.status_code == 200 and "Signed in as <strong>alice</strong>" in page.text
        assert "Nothing was asked since " in page.text
