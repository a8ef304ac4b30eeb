"""Pending lists at scale: keyset pages and filters read by every store from its indexes, and
the CLI (with ``--store`` and ``--url``), the API and the web console showing a page and a
count, never every pending request."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from humanlayer_async import HumanLayer, Status, UnknownRequest
from humanlayer_async._pages import MAX_PAGE
from humanlayer_async.channels import WebChannel
from humanlayer_async.channels.api import PREFIX, ApiChannel, openapi_document
from humanlayer_async.stores import MemoryStore, PostgresStore, SQLiteStore, Store, store_from_url
from humanlayer_async.stores import sqlite as sqlite_store
from humanlayer_async.testing import wait_for_pending

from .conftest import decision, make_request
from .durable_helpers import run_cli
from .test_api import ok, refused
from .test_web import chromium, first_page, signed_in

pytestmark = pytest.mark.anyio

Add = Callable[..., Awaitable[str]]
"""``add(request_id, ago=seconds, **fields)``: store a pending request made ``ago`` seconds
before the test began (``ago=None``: made now, as it comes); its id."""


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind_of_store(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Which store, and for PostgreSQL its server and schema (``dsn?schema=``)."""
    if request.param != "postgres":
        return request.param, None
    return request.param, f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"


@pytest.fixture
async def paged(kind_of_store: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[tuple[Store, Add]]:
    """A store of each kind, and how to add requests made at a given time to it.

    A ``PostgresStore`` stamps ``created_at`` with the database's clock: the time is set
    afterwards, by hand, as a request made then would have it.
    """
    kind, url = kind_of_store
    dsn = None if url is None else url.partition("?")[0]
    began = datetime.now(UTC).replace(microsecond=0)
    store: Store
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "pages.db")
    else:
        assert url is not None
        store = store_from_url(url)

    async def add(request_id: str, ago: float | None = 60.0, **fields: Any) -> str:
        made = make_request(request_id, **fields)
        if ago is not None:
            made = dataclasses.replace(made, created_at=began - timedelta(seconds=ago))
        await store.create(made)
        if dsn is not None and ago is not None:
            assert isinstance(store, PostgresStore)
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    f"UPDATE {store.schema}.requests SET created_at = $2 WHERE id = $1",
                    request_id,
                    made.created_at,
                )
            finally:
                await conn.close()
        return request_id

    yield store, add
    await store.aclose()


async def every_page(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    """The ids of each page, read from the first to the first empty one."""
    pages: list[list[str]] = []
    after = None
    while page := await store.list_pending(limit=limit, after=after, **filters):
        assert len(page) <= limit
        pages.append([request.id for request in page])
        after = page[-1].id
    return pages


# -- the stores --------------------------------------------------------------------------------


async def test_pages_list_every_pending_request_once_in_creation_order_ties_by_id(
    paged: tuple[Store, Add],
) -> None:
    store, add = paged
    # Three requests made at each of four moments, never in their ids' order: a tie is by id.
    for ago, ids in ((30, ("t30-c", "t30-a", "t30-b")), (10, ("t10-b", "t10-c", "t10-a"))):
        for request_id in ids:
            await add(request_id, ago)
    for ago, ids in ((40, ("t40-b", "t40-a", "t40-c")), (20, ("t20-a", "t20-c", "t20-b"))):
        for request_id in ids:
            await add(request_id, ago)
    expected = [f"t{ago}-{letter}" for ago in (40, 30, 20, 10) for letter in "abc"]

    pages = await every_page(store, 2)  # every page boundary but one falls inside a tie
    assert pages == [expected[start : start + 2] for start in range(0, 12, 2)]
    assert await every_page(store, 5) == [expected[:5], expected[5:10], expected[10:]]
    assert [r.id for r in await store.list_pending()] == expected  # limit=None: every one
    assert [r.id for r in await store.list_pending(limit=MAX_PAGE)] == expected
    assert await store.count_pending() == 12


async def test_filters_narrow_pages_and_counts_alike(paged: tuple[Store, Add]) -> None:
    store, add = paged
    await add("wire-0001", 7200, function="wire", tool="bank.wire", run_id="r1")
    await add("wire-0002", 600, function="wire", tool="bank.wire")
    await add("purge-001", 3600, function="purge", tool="db.purge", run_id="r1")
    await add("quest-001", 100, kind="question", function="contact_human", message="Which?")
    await add("named-001", 300, function="bank.wire", tool="other.named")  # a name that is a qualname
    await add("self-0001", 200, function="same", tool="same")  # matched by both: listed once
    await add("gone-0001", None, function="wire", tool="bank.wire", lifetime=-1)  # expired already

    async def ids(**filters: Any) -> list[str]:
        listed = [request.id for request in await store.list_pending(**filters)]
        assert await store.count_pending(**filters) == len(listed), filters
        return listed

    assert await ids(function="wire") == ["wire-0001", "wire-0002"]
    assert await ids(function="bank.wire") == ["wire-0001", "wire-0002", "named-001"]
    assert await ids(function="same") == ["self-0001"]
    assert await ids(function="nothing") == []
    assert await ids(run_id="r1") == ["wire-0001", "purge-001"]
    assert await ids(run_id="r1", function="db.purge") == ["purge-001"]
    assert await ids(kind="question") == ["quest-001"]
    assert await ids(kind="approval", older_than=1800) == ["wire-0001", "purge-001"]
    assert await ids(older_than=timedelta(seconds=250)) == [
        "wire-0001",
        "purge-001",
        "wire-0002",
        "named-001",
    ]
    assert await ids(older_than=0) == [
        "wire-0001",
        "purge-001",
        "wire-0002",
        "named-001",
        "self-0001",
        "quest-001",
    ]
    assert await ids(older_than=timedelta(days=999_999_999)) == []  # none is that old
    assert await ids(id_prefix="wire-000") == ["wire-0001", "wire-0002"]
    assert await ids(id_prefix="WIRE") == []  # exact, case and all
    assert await ids(id_prefix="wire-%") == []  # no wildcards either
    assert await every_page(store, 1, function="bank.wire") == [["wire-0001"], ["wire-0002"], ["named-001"]]
    # The one past its expiry was marked timed out by the sweep each list runs first.
    assert (await store.get("gone-0001")).status is Status.TIMED_OUT


async def test_a_request_decided_while_paging_moves_no_page(paged: tuple[Store, Add]) -> None:
    store, add = paged
    for number in range(6):
        await add(f"page-{number:04d}", 60 - number)
    first = [request.id for request in await store.list_pending(limit=2)]
    assert first == ["page-0000", "page-0001"]
    await store.decide(decision("page-0001", True, "cfo"))  # the page's last: the next one's start
    await store.decide(decision("page-0002", False, "cfo"))  # the next page's first
    second = [request.id for request in await store.list_pending(limit=2, after=first[-1])]
    assert second == ["page-0003", "page-0004"]
    third = [request.id for request in await store.list_pending(limit=2, after=second[-1])]
    assert third == ["page-0005"]
    assert await store.list_pending(limit=2, after=third[-1]) == []
    assert await store.count_pending() == 4


async def test_an_unknown_after_and_bad_limits_are_refused(paged: tuple[Store, Add]) -> None:
    store, add = paged
    await add("only-0001")
    with pytest.raises(UnknownRequest) as unknown:
        await store.list_pending(after="pruned-0001", limit=10)
    assert unknown.value.request_id == "pruned-0001"
    for limit in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="limit"):
            await store.list_pending(limit=limit)  # type: ignore[arg-type]  # wrong on purpose
    for age in (-1, timedelta(seconds=-1), float("nan"), "1h"):
        with pytest.raises(ValueError, match="older_than"):
            await store.list_pending(older_than=age)  # type: ignore[arg-type]  # wrong on purpose
        with pytest.raises(ValueError, match="older_than"):
            await store.count_pending(older_than=age)  # type: ignore[arg-type]  # wrong on purpose
    assert [request.id for request in await store.list_pending(limit=1)] == ["only-0001"]


PAGE_INDEXES = {"page", "expiry", "function", "tool", "run"}


async def test_the_migration_creates_the_page_indexes_and_drops_the_one_they_replace(store_url: str) -> None:
    store = store_from_url(store_url)
    await store.open()
    await store.aclose()
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as file:
            names = {row[0] for row in file.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {f"hl_requests_{name}" for name in PAGE_INDEXES} <= names
        assert "hl_requests_pending" not in names
    else:
        dsn, _, schema = store_url.partition("?schema=")
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
            )
        finally:
            await conn.close()
        made = {row["indexname"]: row["indexdef"] for row in rows}
        assert {f"requests_{name}" for name in PAGE_INDEXES} <= set(made)
        assert "requests_pending" not in made
        assert all("(status = 'pending'::text)" in made[f"requests_{name}"] for name in PAGE_INDEXES)


async def test_sqlite_reads_a_page_from_its_indexes(tmp_path: Path) -> None:
    """The page queries' plans, as SQLite makes them: each through an index, none sorting or
    scanning the whole table (the count alone may scan an index)."""
    path = tmp_path / "plans.db"
    store = SQLiteStore(path)
    await store.open()
    await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:

        def plan(where: str, values: dict[str, Any], function: str | None) -> str:
            query, named = sqlite_store._pending_select(where, values, function, 100)
            return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", named))

        first = plan(*sqlite_store._pending_where(None, None, None, None), None)
        assert "USING INDEX hl_requests_page" in first and "TEMP B-TREE" not in first
        where, values = sqlite_store._pending_where(None, None, None, None)
        after = plan(
            f"{where} AND (created_at, id) > (:after_at, :after_id)", {"after_at": 1, "after_id": ""}, None
        )
        assert "SEARCH hl_requests USING INDEX hl_requests_page ((created_at,id)>(?,?))" in after
        assert "USING INDEX hl_requests_run (run_id=?)" in plan(
            *sqlite_store._pending_where("r", None, None, None), None
        )
        by_function = plan(where, values, "wire")
        assert (
            "hl_requests_function (function=?)" in by_function and "hl_requests_tool (tool=?)" in by_function
        )
        assert "hl_requests_page (created_at<?)" in plan(
            *sqlite_store._pending_where(None, None, 60.0, None), None
        )
        expiry = " | ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM hl_requests WHERE status = 'pending' AND expires_at <= ?",
                (0,),
            )
        )
        assert "USING INDEX hl_requests_expiry" in expiry


async def test_humanlayer_pages_and_counts_through_its_store() -> None:
    store, now = MemoryStore(), datetime.now(UTC)
    for number in range(5):
        made = make_request(f"call-{number:04d}", function="wire" if number % 2 else "purge")
        await store.create(dataclasses.replace(made, created_at=now - timedelta(seconds=50 - number)))
    async with HumanLayer([], store=store, listen=None) as hl:
        page = await hl.pending(function="purge", limit=2)
        assert [r.id for r in page] == ["call-0000", "call-0002"]
        rest = await hl.pending(function="purge", limit=2, after=page[-1].id)
        assert [r.id for r in rest] == ["call-0004"]
        assert await hl.count_pending(function="purge") == 3 and await hl.count_pending() == 5
        assert [r.id for r in await hl.pending(id_prefix="call-0001")] == ["call-0001"]


# -- the API -----------------------------------------------------------------------------------

TOKEN = "ann-token-0123456789abcdef"


def rid(number: int, prefix: str = "aaaa") -> str:
    """A request id as the SDK makes them (32 hex digits), starting with ``prefix``."""
    return f"{prefix}{number:0{32 - len(prefix)}x}"


async def seed(
    store: Store, count: int, *, first: int = 0, step: float = 1.0, ago: float = 0.0, **fields: Any
) -> list[str]:
    """``count`` pending requests (``rid(first)`` on) made ``step`` seconds apart, the newest
    ``ago + step`` seconds ago; their ids, the oldest first."""
    now = datetime.now(UTC)
    ids = []
    for index in range(count):
        made = make_request(rid(first + index), **{"approvers": ("ann",), **fields})
        created = now - timedelta(seconds=ago + step * (count - index))
        await store.create(dataclasses.replace(made, created_at=created))
        ids.append(made.id)
    return ids


async def test_the_api_pages_with_next_and_counts_total_over_http(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "api.db")
    ids = await seed(store, 5, step=100)
    await store.create(make_request(rid(0, "bbbb"), function="purge", approvers=("ann",)))
    async with (
        HumanLayer([ApiChannel(tokens={"ann": TOKEN})], store=store, listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url), headers={"Authorization": f"Bearer {TOKEN}"}) as api,
    ):
        seen: list[str] = []
        query: dict[str, str] = {"limit": "2", "function": "transfer"}
        while True:
            body = ok(await api.get(f"{PREFIX}/requests", params=query), "/requests")
            assert body["total"] == 5 and len(body["requests"]) <= 2
            seen += [request["id"] for request in body["requests"]]
            if body["next"] is None:
                break
            assert body["next"] == seen[-1]
            query["after"] = body["next"]
        assert seen == ids and len(body["requests"]) == 1

        every = ok(await api.get(f"{PREFIX}/requests"), "/requests")  # the default page: 100
        assert (every["next"], every["total"], len(every["requests"])) == (None, 6, 6)
        aged = ok(await api.get(f"{PREFIX}/requests", params={"older_than": "250s"}), "/requests")
        assert [r["id"] for r in aged["requests"]] == ids[:3] and aged["total"] == 3
        prefixed = ok(await api.get(f"{PREFIX}/requests", params={"id_prefix": "bbbb"}), "/requests")
        assert [r["function"] for r in prefixed["requests"]] == ["purge"]

        for name, value in (
            ("limit", "0"),
            ("limit", str(MAX_PAGE + 1)),
            ("limit", "two"),
            ("limit", "-1"),
            ("after", "../x"),
            ("older_than", "soon"),
            ("older_than", "-5m"),
            ("id_prefix", "a%"),
        ):
            error = refused(
                await api.get(f"{PREFIX}/requests", params={name: value}), "/requests", "malformed"
            )
            assert name in error["message"], (name, value)
        gone = await api.get(f"{PREFIX}/requests", params={"after": rid(99)})
        assert "after" in refused(gone, "/requests", "unknown_request")["message"]
    await store.aclose()


def test_the_document_describes_the_page_parameters_and_answer() -> None:
    operation = openapi_document()["paths"][f"{PREFIX}/requests"]["get"]
    assert [p["name"] for p in operation["parameters"]] == [
        "function",
        "run_id",
        "kind",
        "older_than",
        "id_prefix",
        "limit",
        "after",
    ]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["required"] == ["requests", "next", "total"]
    assert "unknown_request" in json.dumps(operation["responses"]["404"])


# -- the CLI -----------------------------------------------------------------------------------

TOKENS = {"ann": TOKEN}


async def test_pending_prints_a_page_and_how_to_see_the_next_with_the_store_and_the_api(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = store_from_url(url)
    try:
        ids = await seed(store, 5, step=100)
        await store.create(make_request(rid(1, "ffff1"), function="refund", approvers=("ann",)))
        await store.create(make_request(rid(2, "ffff2"), function="refund", approvers=("ann",)))
    finally:
        await store.aclose()
    async with HumanLayer([ApiChannel(tokens=TOKENS)], store=url, listen="127.0.0.1:0") as hl:
        assert hl.url is not None
        env = {"HUMANLAYER_TOKEN": TOKEN}
        for where in (("--store", url), ("--url", hl.url)):
            code, out, err = await run_cli("pending", "--limit", "2", *where, env=env)
            assert code == 0, err
            assert [row.split()[0] for row in out.splitlines()[1:]] == [ids[0][:8], ids[1][:8]]
            assert f"showing 2 of 7 pending; the next 2: the same command with --after {ids[1]}" in err
            code, out, err = await run_cli(
                "pending", "--limit", "2", "--after", ids[1], "--json", *where, env=env
            )
            assert code == 0 and [r["id"] for r in json.loads(out)] == ids[2:4]
            assert f"--after {ids[3]}" in err
            code, out, err = await run_cli(
                "pending", "--function", "transfer", "--after", ids[3], *where, env=env
            )
            assert code == 0 and "--after" not in err and len(out.splitlines()) == 2  # the header, ids[4]
            code, out, err = await run_cli("pending", "--older-than", "250s", "--json", *where, env=env)
            assert [r["id"] for r in json.loads(out)] == ids[:3]
            code, _, err = await run_cli("pending", "--after", rid(9, "dead"), *where, env=env)
            assert code == 1 and "no request has this id" in err
            code, _, err = await run_cli("pending", "--limit", str(MAX_PAGE + 1), *where, env=env)
            assert code == 2 and "from 1 to 1000" in err

            code, out, err = await run_cli("show", "aaaa", "--json", *where, env=env)
            assert (code, out) == (1, "") and "'aaaa' is the prefix of 5 pending requests" in err
            code, _, err = await run_cli("show", "ffff", *where, env=env)
            assert code == 1 and "'ffff' is the prefix of 2 pending requests" in err
            code, out, err = await run_cli("show", "ffff2", "--json", *where, env=env)
            assert code == 0 and json.loads(out)["id"] == rid(2, "ffff2"), err


async def test_deciding_all_of_a_function_is_refused_above_the_cap(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    store = store_from_url(url)
    try:
        await seed(store, 999, step=0.001, ago=3600, function="wire", approvers=())  # an hour ago
        await seed(store, 2, first=999, step=0.001, function="wire", approvers=())  # now
        await store.create(make_request(rid(0, "bbbb"), function="purge", approvers=()))
    finally:
        await store.aclose()
    code, out, err = await run_cli("approve", "--all", "--function", "wire", "--yes", "--store", url)
    assert (code, out) == (1, "")
    assert "1,001 pending requests of wire match" in err and "at most 1,000 at once" in err
    assert "--run-id or --older-than" in err
    code, out, err = await run_cli(
        "approve",
        "--all",
        "--function",
        "wire",
        "--older-than",
        "30m",
        "--by",
        "ann",
        "--yes",
        "--store",
        url,
    )
    assert code == 0, err
    assert out.count(" approved by ann via cli") == 999  # each decided, the two newest left
    store = store_from_url(url)
    try:
        assert [request.id for request in await store.list_pending(function="wire")] == [rid(999), rid(1000)]
    finally:
        await store.aclose()


# -- the web console ---------------------------------------------------------------------------

KEY = "k" * 24


def cards(html: str) -> list[str]:
    return re.findall(r'<li class="card [a-z]+" id="req-([^"]+)"', html)


async def test_the_console_shows_the_first_page_the_count_and_a_link_to_the_next() -> None:
    store = MemoryStore()
    ids = await seed(store, 60)
    web = WebChannel(token=KEY)
    async with HumanLayer([web], store=store, listen="127.0.0.1:0"), httpx.AsyncClient() as client:
        await signed_in(client, web)
        first = await client.get(str(web.url))
        assert first.status_code == 200
        assert cards(first.text) == ids[:50]
        assert "Showing 50 of 60 pending" in first.text
        link = re.search(r'<a rel="next" href="([^"]+)">Next page</a>', first.text)
        assert link is not None and link.group(1) == f"/approvals?after={ids[49]}"
        assert 'data-events="/approvals/events"' in first.text

        second = await client.get(f"{web.url}?after={ids[49]}")
        assert second.status_code == 200 and cards(second.text) == ids[50:]
        assert "Showing 10 of 60 pending" in second.text and 'rel="next"' not in second.text
        assert '<a href="/approvals">First page</a>' in second.text
        assert f'data-events="/approvals/events?after={ids[49]}"' in second.text

        async with client.stream("GET", f"{web.url}/events?after={ids[49]}") as events:
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    snapshot = json.loads(line.removeprefix("data: "))
                    break
        assert cards(snapshot["pending"]) == ids[50:] and "Showing 10 of 60 pending" in snapshot["pages"]

        assert (await client.get(f"{web.url}?after=..%2Fx")).status_code == 400
        gone = await client.get(f"{web.url}?after={rid(99)}")
        assert gone.status_code == 404 and 'href="/approvals">First page' in gone.text
        assert (await client.get(f"{web.url}/events?after={rid(99)}")).status_code == 404


async def test_a_console_page_that_holds_every_request_shows_no_pages() -> None:
    store = MemoryStore()
    ids = await seed(store, 3)
    web = WebChannel(token=KEY)
    async with HumanLayer([web], store=store, listen="127.0.0.1:0"), httpx.AsyncClient() as client:
        await signed_in(client, web)
        page = await client.get(str(web.url))
        assert cards(page.text) == ids
        assert re.search(r'<p id="pending-pages" class="pages meta" data-total="3" hidden>', page.text)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium (``test_web``'s), with its own profile."""
    async with chromium(str(tmp_path / "profile")) as context:
        yield await first_page(context)


async def test_the_browser_keeps_the_page_and_counts_what_comes_and_goes(browser: Any) -> None:
    """A page with pages after it counts a new request (made after every other), and shows it
    no card; the last page shows its card. A decision takes the card away, and counts."""
    page = browser
    store = MemoryStore()
    ids = await seed(store, 51)
    web = WebChannel()
    async with HumanLayer([web], store=store, listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def purge(table: str) -> str:
            return "purged"

        shown = page.locator("#pending > li.card")

        async def counted(text: str) -> None:
            await page.locator("#pending-pages .count", has_text=text).wait_for(state="attached")

        await page.goto(web.login_url())
        await page.locator("#connection", has_text="on").wait_for()
        await counted("Showing 50 of 51 pending")
        async with anyio.create_task_group() as tg:
            tg.start_soon(purge, "orders")
            [*_, late] = await wait_for_pending(hl, 52, within=5)
            await counted("Showing 50 of 52 pending")
            assert await shown.count() == 50 and await page.locator(f"#req-{late.id}").count() == 0
            await hl.decide(late.id, True, by="ann")
            await page.locator(f"#dec-{late.id}").wait_for()  # in the recent decisions
            await counted("Showing 50 of 51 pending")
            assert await shown.count() == 50

            await page.goto(f"{web.url}?after={ids[49]}")  # the last page: new requests show on it
            await page.locator("#connection", has_text="on").wait_for()
            assert await page.locator("#pending-pages .count").text_content() == "Showing 1 of 51 pending"
            tg.start_soon(purge, "users")
            [*_, later] = await wait_for_pending(hl, 52, within=5)
            await page.locator(f"#req-{later.id}").wait_for()
            await counted("Showing 2 of 52 pending")
            await hl.decide(later.id, True, by="ann")
            await page.locator(f"#req-{later.id}").wait_for(state="detached")
            await counted("Showing 1 of 51 pending")
