"""The durable stores' contract, on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pydantic
import pytest

from humanlayer_async import (
    ArgumentsChanged,
    ConfigurationError,
    Decision,
    HumanLayer,
    Status,
    StoreError,
    UnknownRequest,
)
from humanlayer_async._audit import make_entry
from humanlayer_async._codec import digest
from humanlayer_async._models import Execution, Vote
from humanlayer_async.stores import (
    DurableStore,
    MemoryStore,
    PostgresStore,
    SQLiteStore,
    Store,
    StoreEvent,
    store_from_url,
)
from humanlayer_async.stores.base import Step, Tally
from humanlayer_async.testing import AutoChannel

from .conftest import decision, make_request
from .durable_helpers import pg_schema_exists

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """A store of each kind: ``None`` for a MemoryStore, else a durable store's URL."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conformance.db'}"
    return f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"


@pytest.fixture
async def two(any_store_url: str | None) -> AsyncIterator[tuple[Store, Store]]:
    """Two handles on one store, as two processes have (the one MemoryStore twice: it has no other).

    Every store meets the one contract these tests hold it to.
    """
    if any_store_url is None:
        memory = MemoryStore()
        yield memory, memory
        await memory.aclose()
        return
    first, second = store_from_url(any_store_url), store_from_url(any_store_url)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def durable_two(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two handles on one durable store, as two processes have."""
    first, second = store_from_url(store_url), store_from_url(store_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_first_decision_wins_across_handles_and_survives_reopening(
    store_url: str, durable_two: tuple[Store, Store]
) -> None:
    first, second = durable_two
    await first.create(make_request("r1", message=None))
    approved = await second.decide(decision("r1", True, "alice"))
    assert await first.decide(decision("r1", False, "bob")) == approved
    await first.aclose()
    reopened = store_from_url(store_url)
    try:
        stored = await reopened.get("r1")
        assert stored.decision == approved and stored.status is Status.APPROVED
        assert (stored.kwargs, stored.context, stored.approvers, stored.doc) == (
            {"amount": 5},
            {"env": "prod"},
            ("cfo",),
            "Move money.",
        )
    finally:
        await reopened.aclose()


async def test_pending_lists_every_handles_requests_oldest_first_with_filters(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("a", run_id="run-1"))
    await second.create(make_request("b", run_id="run-2", kind="question", message="Which vendor?"))
    await second.create(make_request("c", run_id="run-1"))
    await first.decide(decision("c", True, "alice"))
    assert [r.id for r in await first.list_pending()] == ["a", "b"]
    assert [r.id for r in await second.list_pending(run_id="run-1")] == ["a"]
    assert [r.id for r in await second.list_pending(kind="question")] == ["b"]


async def test_watch_yields_other_handles_requests_and_decisions(
    durable_two: tuple[Store, Store],
) -> None:
    first, second = durable_two
    await first.list_pending()  # connected (PostgreSQL: listening) before anything is written
    seen: list[StoreEvent] = []

    async def follow() -> None:
        async for event in first.watch():
            seen.append(event)
            if event.kind == "decided":
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.3)
            await second.create(make_request("w1"))
            await second.decide(decision("w1", True, "alice"))
    assert seen == [StoreEvent("requested", "w1"), StoreEvent("decided", "w1")]


async def test_an_expired_request_is_timed_out_by_the_first_reader_once(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("x1", lifetime=0.3))
    await anyio.sleep(0.5)
    assert await second.list_pending() == []
    late = await first.decide(decision("x1", True, "alice"))  # too late: the timeout stands
    assert late.status is Status.TIMED_OUT and late.via == "timeout"
    events = [e.event for e in await first.history(request_id="x1")]
    assert events == ["approval.requested", "approval.timed_out"]


async def test_prune_deletes_long_decided_requests_and_keeps_pending_ones_and_the_audit(
    two: tuple[Store, Store],
) -> None:
    first, _ = two
    await first.create(make_request("old"))
    await first.create(make_request("open"))
    await first.decide(decision("old", True, "alice"))
    assert await first.prune() == 0  # the default retention is 30 days
    await anyio.sleep(0.05)
    assert await first.prune(timedelta(seconds=0.01)) == 1
    assert [r.id for r in await first.list_pending()] == ["open"]
    assert [e.event for e in await first.history(request_id="old")] == [
        "approval.requested",
        "approval.decided",
    ]


async def test_a_key_attaches_to_its_request_and_the_run_is_claimed_once(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    request = make_request("k1", key="run-1/transfer/0", digest="d1")
    assert (await first.create_or_attach(request)).id == "k1"
    attached = await second.create_or_attach(make_request("k2", key="run-1/transfer/0", digest="d1"))
    assert attached.id == "k1"  # the second caller of the same key finds the first request
    with pytest.raises(ArgumentsChanged):
        await second.begin_execution("k1", "another digest")
    await first.decide(decision("k1", True, "alice"))
    assert await first.begin_execution("k1", "d1") is None  # this caller runs it
    assert await second.begin_execution("k1", "d1") == Execution("executing")  # the other may not
    await second.finish_execution("k1", "ok", '"paid"')
    assert await first.begin_execution("k1", "d1") == Execution("executed", "ok", '"paid"')


async def test_an_approval_past_the_expiry_does_not_count_a_cancellation_does(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("e1", lifetime=0.2))
    await first.create(make_request("e2", lifetime=0.2))
    await anyio.sleep(0.3)
    late = await second.decide(decision("e1", True, "alice"))
    assert late.status is Status.TIMED_OUT and late.by is None
    cancelled = Decision("e2", False, Status.CANCELLED, None, "caller", None, datetime.now(UTC))
    assert (await second.decide(cancelled)).status is Status.CANCELLED


async def test_requests_and_decisions_are_written_with_their_audit_entries(
    two: tuple[Store, Store],
) -> None:
    """One transaction each: a process killed after storing one cannot leave it unaudited."""
    first, second = two
    request = make_request("a1")
    await first.create(request)
    await second.decide(decision("a1", True, "alice"))
    await first.decide(decision("a1", False, "bob"))  # too late: no entry for it
    await first.record(make_entry("approval.executed", "a1", outcome="ok"))
    entries = await second.history(request_id="a1")
    assert [(e.event, e.fields.get("by")) for e in entries] == [
        ("approval.requested", None),
        ("approval.decided", "alice"),
        ("approval.executed", None),
    ]
    assert entries[0].fields == {
        "function": "transfer",
        "kind": "approval",
        "kwargs": {"amount": 5},
        "expires_at": request.expires_at.isoformat(),
    }
    assert entries[1].fields == {"status": "approved", "by": "alice", "via": "api", "comment": None}


async def test_who_requested_a_call_and_the_channels_id_of_who_decided_it_are_kept_and_audited(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("w1", requested_by="carol@example.com"))
    await first.create(make_request("w2"))
    [pending] = [r for r in await second.list_pending() if r.id == "w1"]
    assert pending.requested_by == "carol@example.com"
    assert not pending.may_decide("carol@example.com")  # still refused once read back from the store
    at = datetime.now(UTC).replace(microsecond=0)
    by_slack = Decision("w1", True, Status.APPROVED, "bob@example.com", "slack", "ok", at, user="U0BOB")
    await second.decide(by_slack)
    await first.decide(decision("w2", True, "alice"))
    stored = await first.get("w1")
    assert (stored.requested_by, stored.decision) == ("carol@example.com", by_slack)
    assert stored.decision is not None and stored.decision.user == "U0BOB"
    plain = await second.get("w2")  # neither known: both read back as None
    assert plain.requested_by is None and plain.decision is not None and plain.decision.user is None
    requested, decided = await second.history(request_id="w1")
    assert requested.fields["requested_by"] == "carol@example.com"
    assert decided.fields == {
        "status": "approved",
        "by": "bob@example.com",
        "via": "slack",
        "comment": "ok",
        "user": "U0BOB",
    }
    assert [
        ("requested_by" in e.fields, "user" in e.fields) for e in await first.history(request_id="w2")
    ] == [
        (False, False),
        (False, False),
    ]


# -- vote: requests that need several approvals (approvals=N), counted once each across handles


def _vote(by: str, approved: bool = True, *, via: str = "api", comment: str | None = None) -> Vote:
    return Vote(by, approved, via, comment, datetime.now(UTC).replace(microsecond=0))


async def test_a_quorum_is_met_by_distinct_approvers_across_handles_and_later_votes_change_nothing(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("q1", approvals=2, approvers=("alice@x.com", "bob@x.com", "carol@x.com")))
    alice = Vote("Alice@x.com", True, "slack", "fine", datetime.now(UTC).replace(microsecond=0), "U0ALICE")
    assert await first.vote("q1", alice, 2) == Tally(None, (alice,), False)
    waiting = await second.get("q1")
    assert (waiting.status, waiting.approvals, waiting.votes) == (Status.PENDING, 2, (alice,))
    [listed] = await second.list_pending()
    assert listed.votes == (alice,)

    # The same person again, through the other handle and in another case: counted once.
    assert await second.vote("q1", _vote("alice@x.com", via="email"), 2) == Tally(None, (alice,), False)

    bob = _vote("bob@x.com", comment="ok")
    decided = await second.vote("q1", bob, 2)
    assert decided.decided_now and decided.votes == (alice, bob)
    approved = decided.decision
    assert approved is not None
    assert (approved.status, approved.approved, approved.by, approved.via, approved.comment) == (
        Status.APPROVED,
        True,
        "bob@x.com",
        "api",
        "ok",
    )
    assert approved.votes == (alice, bob)
    stored = await first.get("q1")  # read back through the other handle
    assert stored.status is Status.APPROVED and stored.decision == approved
    assert stored.decision is not None and stored.decision.votes == (alice, bob)
    assert stored.votes == (alice, bob) and await first.list_pending() == []

    # A vote after the decision: the decision stands, this vote is not counted.
    assert await first.vote("q1", _vote("carol@x.com", False), 2) == Tally(approved, (alice, bob), False)
    assert await second.decide(decision("q1", False, "carol@x.com")) == approved

    entries = await second.history(request_id="q1")
    assert [e.event for e in entries] == [
        "approval.requested",
        "approval.voted",
        "approval.voted",
        "approval.decided",
    ]
    assert entries[1].fields == {
        "by": "Alice@x.com",
        "approved": True,
        "via": "slack",
        "comment": "fine",
        "user": "U0ALICE",
        "approvals": 1,
        "needed": 2,
    }
    assert entries[2].fields == {
        "by": "bob@x.com",
        "approved": True,
        "via": "api",
        "comment": "ok",
        "approvals": 2,
        "needed": 2,
    }
    assert entries[3].fields == {"status": "approved", "by": "bob@x.com", "via": "api", "comment": "ok"}


async def test_one_denial_denies_a_quorum_request_at_once(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.create(make_request("v1", approvals=2))
    await first.create(make_request("v2", approvals=3))
    no = _vote("carol@x.com", False, comment="not today")
    vetoed = await second.vote("v1", no, 2)
    assert vetoed.decided_now and vetoed.votes == (no,)
    assert vetoed.decision is not None
    assert (vetoed.decision.status, vetoed.decision.by, vetoed.decision.votes) == (
        Status.DENIED,
        "carol@x.com",
        (no,),
    )
    assert (await first.get("v1")).decision == vetoed.decision

    # After an approval, the denial still denies, carrying both votes.
    yes, also_no = _vote("alice@x.com"), _vote("bob@x.com", False)
    assert (await first.vote("v2", yes, 3)).decision is None
    denied = await second.vote("v2", also_no, 3)
    assert denied.decision is not None and denied.decision.status is Status.DENIED
    stored = await first.get("v2")
    assert stored.decision is not None and stored.decision.votes == (yes, also_no)
    assert [e.event for e in await first.history(request_id="v1")] == [
        "approval.requested",
        "approval.voted",
        "approval.decided",
    ]
    assert (await first.history(request_id="v1"))[1].fields["approvals"] == 0


async def test_votes_on_an_expired_quorum_request_get_the_timeout(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.create(make_request("t1", approvals=2, lifetime=0.5))
    await first.create(make_request("t2", approvals=2, lifetime=0.5))
    early = _vote("alice@x.com")
    assert (await first.vote("t1", early, 2)).decision is None
    await anyio.sleep(0.7)
    late = await second.vote("t1", _vote("bob@x.com"), 2)
    assert late.decision is not None and not late.decided_now
    assert (late.decision.status, late.decision.via, late.decision.votes) == (Status.TIMED_OUT, "timeout", ())
    assert late.votes == (early,)  # the one counted in time
    untouched = await first.vote("t2", _vote("carol@x.com", False), 2)  # a denial is late as well
    assert untouched.decision is not None and untouched.decision.status is Status.TIMED_OUT
    assert untouched.votes == ()
    assert [e.event for e in await second.history(request_id="t1")] == [
        "approval.requested",
        "approval.voted",
        "approval.timed_out",
    ]
    assert [e.event for e in await second.history(request_id="t2")] == [
        "approval.requested",
        "approval.timed_out",
    ]
    with pytest.raises(UnknownRequest):
        await first.vote("nowhere", _vote("alice@x.com"), 2)


async def _at_once(casts: list[tuple[Store, str, Vote]], needed: int) -> list[Tally]:
    """Cast every ``(store, request id, vote)`` at once, each in its own task; their tallies."""
    tallies: list[Tally] = []

    async def cast(store: Store, request_id: str, vote: Vote) -> None:
        tallies.append(await store.vote(request_id, vote, needed))

    async with anyio.create_task_group() as tg:
        for store, request_id, vote in casts:
            tg.start_soon(cast, store, request_id, vote)
    return tallies


async def test_concurrent_votes_from_many_handles_are_each_counted_once(store_url: str) -> None:
    """Handles as separate processes have (their own connections), voting at the same instant."""
    handles = [store_from_url(store_url) for _ in range(3)]
    try:
        for store in handles:
            await store.open()  # connected: the votes meet in the database, not in connecting
        voters = ("alice@x.com", "bob@x.com", "carol@x.com")
        for round_ in range(5):
            request_id = f"c{round_}"
            await handles[0].create(make_request(request_id, approvals=3))
            # Each voter twice, through two different handles.
            casts = [(handles[index % 3], request_id, _vote(by)) for index, by in enumerate(voters * 2)]
            tallies = await _at_once(casts, 3)
            [made] = [t for t in tallies if t.decided_now]
            assert made.decision is not None and made.decision.status is Status.APPROVED
            assert sorted(v.by for v in made.decision.votes) == sorted(voters), round_
            assert all(t.decision in (None, made.decision) for t in tallies)  # one decision stands
            stored = await handles[1].get(request_id)
            assert stored.decision == made.decision and len(stored.votes) == 3
            voted = [
                e for e in await handles[2].history(request_id=request_id) if e.event == "approval.voted"
            ]
            assert sorted(e.fields["approvals"] for e in voted) == [1, 2, 3], round_

        # Twenty approvals by one person at once: one vote, and the request still waits.
        await handles[0].create(make_request("dup", approvals=2))
        tallies = await _at_once(
            [(handles[index % 3], "dup", _vote("alice@x.com")) for index in range(20)], 2
        )
        assert all(t.decision is None and len(t.votes) == 1 for t in tallies) and len(tallies) == 20
        stored = await handles[2].get("dup")
        assert stored.status is Status.PENDING and [v.by for v in stored.votes] == ["alice@x.com"]
        voted = [e for e in await handles[0].history(request_id="dup") if e.event == "approval.voted"]
        assert len(voted) == 1
    finally:
        for store in handles:
            await store.aclose()


# -- edits: an approver changes editable arguments; the store keeps the call that will run -------

# Keys jsonb orders otherwise than canonical JSON (shortest first), a float, text past ASCII.
ASKED = {"amount": 5, "memo": "Miete für März", "rate": 1.5, "to": {"iban": "DE02", "bic": None}}
EDITABLE = {"amount": {"type": "integer"}, "memo": {"anyOf": [{"type": "string"}, {"type": "null"}]}}
EDITS = {"amount": 3, "memo": None}
EDITED = {**ASKED, **EDITS}


async def test_an_approval_with_edits_stores_the_edited_call_its_digest_and_the_edits(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("e1", kwargs=ASKED, editable=EDITABLE, digest=digest(ASKED)))
    [pending] = await second.list_pending()
    assert (pending.editable, pending.kwargs, pending.digest) == (EDITABLE, ASKED, digest(ASKED))
    at = datetime.now(UTC).replace(microsecond=0)
    approved = Decision("e1", True, Status.APPROVED, "alice", "api", "less", at, edits=EDITS)
    assert await second.decide(approved) == approved
    stored = await first.get("e1")  # read back through the other handle
    assert stored.decision == approved
    assert stored.decision is not None and stored.decision.edits == EDITS
    assert (stored.kwargs, stored.editable) == (EDITED, EDITABLE)
    assert stored.digest == digest(EDITED) != digest(ASKED)  # what a run's replay compares

    # A later decision with other edits does not stand, and changes nothing.
    late = Decision("e1", True, Status.APPROVED, "bob", "api", None, at, edits={"amount": 1})
    assert await first.decide(late) == approved
    assert (await second.get("e1")).kwargs == EDITED
    decided = (await second.history(request_id="e1"))[-1]
    assert (decided.event, decided.fields) == (
        "approval.decided",
        {"status": "approved", "by": "alice", "via": "api", "comment": "less", "edits": EDITS},
    )

    with pytest.raises(ArgumentsChanged):  # the call as asked is not the one approved
        await second.begin_execution("e1", digest(ASKED))
    assert await first.begin_execution("e1", digest(EDITED)) is None


async def test_an_approval_with_edits_restarts_the_count_of_a_quorum_for_the_edited_call(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("e2", kwargs=ASKED, editable=EDITABLE, digest=digest(ASKED), approvals=2))
    alice = _vote("alice@x.com")
    assert await first.vote("e2", alice, 2) == Tally(None, (alice,), False)
    bob = dataclasses.replace(_vote("bob@x.com", comment="less"), edits=EDITS)
    assert await second.vote("e2", bob, 2) == Tally(None, (bob,), False)  # alice approved another call
    waiting = await first.get("e2")
    assert (waiting.status, waiting.votes, waiting.kwargs) == (Status.PENDING, (bob,), EDITED)
    assert waiting.digest == digest(EDITED)

    carol = _vote("carol@x.com")
    made = await first.vote("e2", carol, 2)
    assert made.decided_now and made.votes == (bob, carol)
    assert made.decision is not None
    assert (made.decision.status, made.decision.by, made.decision.edits, made.decision.votes) == (
        Status.APPROVED,
        "carol@x.com",
        EDITS,
        (bob, carol),
    )
    stored = await second.get("e2")
    assert stored.decision == made.decision and (stored.kwargs, stored.digest) == (EDITED, digest(EDITED))
    assert stored.decision is not None and stored.decision.edits == EDITS
    entries = await second.history(request_id="e2")
    assert [(e.event, e.fields.get("edits"), e.fields.get("approvals")) for e in entries] == [
        ("approval.requested", None, None),
        ("approval.voted", None, 1),
        ("approval.voted", EDITS, 1),
        ("approval.voted", None, 2),
        ("approval.decided", EDITS, None),
    ]
    with pytest.raises(ArgumentsChanged):
        await first.begin_execution("e2", digest(ASKED))
    assert await second.begin_execution("e2", digest(EDITED)) is None


class Currency(enum.Enum):
    EUR = "EUR"


@dataclasses.dataclass
class Invoice:
    number: int
    due: datetime


class Vendor(pydantic.BaseModel):
    name: str
    iban: str


async def test_arguments_are_stored_as_json(store_url: str) -> None:
    store = store_from_url(store_url)
    async with HumanLayer([AutoChannel()], store=store, listen=None) as hl:

        @hl.require_approval()
        async def pay(
            invoice: Invoice, vendor: Vendor, currency: Currency, memo: bytes, tags: tuple[str, ...]
        ) -> str:
            return "paid"

        due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert (
            await pay(Invoice(7, due), Vendor(name="ACME", iban="DE00"), Currency.EUR, b"\x00hi", ("a", "b"))
            == "paid"
        )
        [entry] = [e for e in await store.history() if e.event == "approval.requested"]
        stored = await store.get(entry.request_id)
    assert stored.kwargs == {
        "invoice": {"number": 7, "due": "2030-01-02T03:04:05+00:00"},
        "vendor": {"name": "ACME", "iban": "DE00"},
        "currency": "EUR",
        "memo": "AGhp",
        "tags": ["a", "b"],
    }
    assert stored.digest == digest(stored.kwargs)


async def test_an_argument_without_json_form_is_a_store_error_naming_it_at_request_time(
    store_url: str,
) -> None:
    runs: list[object] = []
    store = store_from_url(store_url)
    async with HumanLayer([AutoChannel()], store=store, listen=None) as hl:

        @hl.require_approval()
        async def upload(path: str, handle: object) -> None:
            runs.append(handle)

        with pytest.raises(StoreError, match=r"argument 'handle' cannot be stored as JSON: object"):
            await upload("/tmp/x", object())
        assert await hl.pending() == []
    assert runs == []


def test_equal_arguments_have_equal_digests_whatever_their_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


async def test_sqlite_refuses_a_newer_schema_and_creates_missing_directories(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "deep" / "dir" / "a.db"
    store = SQLiteStore(path)
    await store.create(make_request("s1"))
    await store.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    newer = SQLiteStore(path)
    with pytest.raises(StoreError, match="newer than this SDK"):
        await newer.get("s1")
    await newer.aclose()


def test_store_urls() -> None:
    assert isinstance(store_from_url("sqlite:///relative.db"), SQLiteStore)
    absolute = store_from_url("sqlite:////abs/file.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == Path("/abs/file.db")
    pg = store_from_url("postgresql://u:secret@db.example/app?schema=fleet&sslmode=disable")
    assert isinstance(pg, PostgresStore) and pg.schema == "fleet" and "secret" not in repr(pg)
    with pytest.raises(ConfigurationError, match="unsupported store URL") as caught:
        store_from_url("redis://u:hunter2@cache/0")
    assert "hunter2" not in str(caught.value)


@pytest.mark.postgres
async def test_postgres_schema_is_created_on_an_empty_database_and_reused(
    pg_dsn: str, pg_schema: str
) -> None:
    stores = [PostgresStore(pg_dsn, schema=pg_schema) for _ in range(3)]
    try:
        # Three processes' worth of handles creating the schema at once: one creates, all work.
        async with anyio.create_task_group() as tg:
            for index, store in enumerate(stores):
                tg.start_soon(store.create, make_request(f"p{index}"))
        assert len(await stores[0].list_pending()) == 3
    finally:
        for store in stores:
            await store.aclose()
    again = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        assert len(await again.list_pending()) == 3  # the existing schema, as it was
    finally:
        await again.aclose()
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"UPDATE {pg_schema}.meta SET version = 99")
    await conn.close()
    newer = PostgresStore(pg_dsn, schema=pg_schema)
    with pytest.raises(StoreError, match="newer than this SDK"):
        await newer.list_pending()
    await newer.aclose()


async def test_postgres_store_names_the_extra_when_asyncpg_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigurationError, match=r"humanlayer-async\[postgres\]"):
        PostgresStore("postgresql://localhost/db")


@pytest.mark.postgres
async def test_postgres_errors_become_store_errors_without_the_password() -> None:
    store = PostgresStore("postgresql://nobody:hunter2@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(StoreError) as caught:
        await store.list_pending()
    assert caught.value.__cause__ is not None and "hunter2" not in str(caught.value)
    await store.aclose()


# -- claim: a key claimed once across every handle (the web console's single-use sign-in codes)


async def test_a_key_is_claimed_once_across_handles_and_forgotten_after_it_expires(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    later = datetime.now(UTC) + timedelta(minutes=5)
    results: list[bool] = []

    async def claim(store: Store, key: str) -> None:
        results.append(await store.claim(key, later))

    async with anyio.create_task_group() as tg:  # concurrently, through both handles
        for index in range(20):
            tg.start_soon(claim, (first, second)[index % 2], "code-1")
    assert sorted(results) == [False] * 19 + [True]
    assert await second.claim("code-2", later) is True  # another key is another claim
    assert await first.claim("code-2", later) is False
    await first.claim("brief", datetime.now(UTC) + timedelta(seconds=0.2))
    await anyio.sleep(0.4)
    assert await second.claim("brief", later) is True  # expired: forgotten, not kept forever
    assert await first.claim("code-1", later) is False  # still within its expiry


async def test_a_store_of_the_previous_release_gains_the_claims_table_and_keeps_its_version(
    store_url: str,
) -> None:
    """Additive changes never raise the schema version the previous release checks (it refuses
    a newer one): a fleet upgraded one process at a time keeps working, old processes included."""
    store = store_from_url(store_url)
    await store.create(make_request("m1"))
    await store.aclose()
    await downgrade_to_the_previous_release(store)
    reopened = store_from_url(store_url)
    try:
        assert [r.id for r in await reopened.list_pending()] == ["m1"]
        assert await reopened.claim("after-migration", datetime.now(UTC) + timedelta(minutes=1)) is True
    finally:
        await reopened.aclose()
    assert await schema_version(reopened) == 1  # what the previous release reads, and accepts

    # A newer release's addition, unknown here, is left alone and does not stop this one.
    await run_sql(reopened, "INSERT INTO {additions} (name) VALUES ('from-a-newer-release')")
    again = store_from_url(store_url)
    try:
        assert [r.id for r in await again.list_pending()] == ["m1"]
    finally:
        await again.aclose()


async def test_a_store_without_the_principal_columns_gains_them_and_keeps_its_requests(
    store_url: str,
) -> None:
    """The release before ``requested_by`` and ``decided_user``: its database gains both columns
    (an additive change, the schema version unchanged) and its requests read back as unknown."""
    store = store_from_url(store_url)
    await store.create(make_request("old-pending"))
    await store.create(make_request("old-decided"))
    await store.decide(decision("old-decided", True, "alice"))
    await store.aclose()
    await drop_the_principal_columns(store)
    assert {"requested_by", "decided_user"}.isdisjoint(await request_columns(store))
    reopened = store_from_url(store_url)
    try:
        [pending] = await reopened.list_pending()
        assert (pending.id, pending.requested_by) == ("old-pending", None)
        old = await reopened.get("old-decided")
        assert old.decision is not None and (old.decision.by, old.decision.user) == ("alice", None)
        await reopened.create(make_request("new", requested_by="carol@example.com"))
        at = datetime.now(UTC).replace(microsecond=0)
        await reopened.decide(
            Decision("new", True, Status.APPROVED, "bob@example.com", "slack", None, at, user="U0BOB")
        )
    finally:
        await reopened.aclose()
    assert {"requested_by", "decided_user"} <= await request_columns(reopened)
    assert await schema_version(reopened) == 1
    again = store_from_url(store_url)  # another process, after a restart
    try:
        new = await again.get("new")
        assert new.requested_by == "carol@example.com"
        assert new.decision is not None and new.decision.user == "U0BOB"
    finally:
        await again.aclose()


async def test_a_store_without_the_quorum_columns_gains_them_and_keeps_its_requests(
    store_url: str,
) -> None:
    """The release before ``approvals`` and ``votes``: its database gains both columns (an
    additive change, the schema version unchanged); its requests need one approval each."""
    store = store_from_url(store_url)
    await store.create(make_request("old-pending"))
    await store.create(make_request("old-decided"))
    await store.decide(decision("old-decided", True, "alice"))
    await store.aclose()
    await drop_the_quorum_columns(store)
    assert {"approvals", "votes"}.isdisjoint(await request_columns(store))
    reopened = store_from_url(store_url)
    try:
        [pending] = await reopened.list_pending()
        assert (pending.id, pending.approvals, pending.votes) == ("old-pending", 1, ())
        old = await reopened.get("old-decided")
        assert old.decision is not None and (old.decision.by, old.decision.votes) == ("alice", ())
        await reopened.create(make_request("new", approvals=2))
        assert (await reopened.vote("new", _vote("bob@x.com"), 2)).decision is None
    finally:
        await reopened.aclose()
    assert {"approvals", "votes"} <= await request_columns(reopened)
    assert await schema_version(reopened) == 1
    again = store_from_url(store_url)  # another process, after a restart
    try:
        new = await again.get("new")
        assert (new.approvals, [v.by for v in new.votes], new.status) == (2, ["bob@x.com"], Status.PENDING)
    finally:
        await again.aclose()


async def test_a_store_without_the_edits_columns_gains_them_and_keeps_its_requests(
    store_url: str,
) -> None:
    """The release before ``editable`` and ``decided_edits``: its database gains both columns (an
    additive change, the schema version unchanged); its requests read back without edits."""
    store = store_from_url(store_url)
    await store.create(make_request("old-pending"))
    await store.create(make_request("old-decided"))
    await store.decide(decision("old-decided", True, "alice"))
    await store.aclose()
    await drop_the_edits_columns(store)
    assert {"editable", "decided_edits"}.isdisjoint(await request_columns(store))
    reopened = store_from_url(store_url)
    try:
        [pending] = await reopened.list_pending()
        assert (pending.id, pending.editable) == ("old-pending", None)
        old = await reopened.get("old-decided")
        assert old.decision is not None and (old.decision.by, old.decision.edits) == ("alice", None)
        await reopened.create(make_request("new", editable=EDITABLE))
        at = datetime.now(UTC).replace(microsecond=0)
        await reopened.decide(
            Decision("new", True, Status.APPROVED, "bob", "api", None, at, edits={"amount": 3})
        )
    finally:
        await reopened.aclose()
    assert {"editable", "decided_edits"} <= await request_columns(reopened)
    assert await schema_version(reopened) == 1
    again = store_from_url(store_url)  # another process, after a restart
    try:
        new = await again.get("new")
        assert (new.editable, new.kwargs, new.digest) == (EDITABLE, {"amount": 3}, digest({"amount": 3}))
        assert new.decision is not None and new.decision.edits == {"amount": 3}
    finally:
        await again.aclose()


async def test_a_store_without_grants_gains_them_and_keeps_its_requests(store_url: str) -> None:
    """The release before grants and schedules: its database gains the two tables and the two
    request columns (additive: the schema version unchanged); its requests read back as before."""
    store = store_from_url(store_url)
    await store.create(make_request("old-pending"))
    await store.aclose()
    await drop_the_grants(store)
    assert {"tool", "decided_grant"}.isdisjoint(await request_columns(store))
    reopened = store_from_url(store_url)
    try:
        [pending] = await reopened.list_pending()
        assert (pending.id, pending.tool) == ("old-pending", None)
        await reopened.schedule("old-pending", [Step("remind", datetime.now(UTC))])
        assert await reopened.take("old-pending", "remind", timedelta(seconds=5)) == 0
        assert await reopened.grants() == []
    finally:
        await reopened.aclose()
    assert {"tool", "decided_grant"} <= await request_columns(reopened)
    assert await schema_version(reopened) == 1


async def run_sql(store: DurableStore, statement: str) -> None:
    """Run ``statement`` on ``store``'s database; ``{additions}``, ``{claims}``, ``{requests}``,
    ``{grants}`` and ``{schedule}`` name its tables."""
    if isinstance(store, SQLiteStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            db.execute(
                statement.format(
                    additions="hl_additions",
                    claims="hl_claims",
                    requests="hl_requests",
                    grants="hl_grants",
                    schedule="hl_schedule",
                )
            )
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store._dsn)
    try:
        await pg.execute(
            statement.format(
                additions=f"{store.schema}.additions",
                claims=f"{store.schema}.claims",
                requests=f"{store.schema}.requests",
                grants=f"{store.schema}.grants",
                schedule=f"{store.schema}.schedule",
            )
        )
    finally:
        await pg.close()


async def request_columns(store: DurableStore) -> set[str]:
    """The columns of ``store``'s requests table, as its database has them."""
    if isinstance(store, SQLiteStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as db:
            return {row[1] for row in db.execute("PRAGMA table_info(hl_requests)")}
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store._dsn)
    try:
        rows = await pg.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = 'requests'",
            store.schema,
        )
        return {row["column_name"] for row in rows}
    finally:
        await pg.close()


async def schema_version(store: DurableStore) -> int:
    if isinstance(store, SQLiteStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store._dsn)
    try:
        return int(await pg.fetchval(f"SELECT max(version) FROM {store.schema}.meta"))
    finally:
        await pg.close()


async def downgrade_to_the_previous_release(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before additions left it: no claims, no
    principal, quorum, edits or grant columns, no grants or schedule, no additions."""
    await drop_the_principal_columns(store)
    await drop_the_quorum_columns(store)
    await drop_the_edits_columns(store)
    await drop_the_grants(store)
    await run_sql(store, "DROP TABLE {claims}")
    await run_sql(store, "DROP TABLE {additions}")


async def drop_the_principal_columns(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before ``requested_by`` and ``decided_user``
    left it: without the two columns, nor the record of their addition."""
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN requested_by")
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN decided_user")
    await run_sql(store, "DELETE FROM {additions} WHERE name = 'principals'")


async def drop_the_quorum_columns(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before ``approvals`` and ``votes`` left it."""
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN approvals")
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN votes")
    await run_sql(store, "DELETE FROM {additions} WHERE name = 'quorum'")


async def drop_the_edits_columns(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before ``editable`` and ``decided_edits`` left it."""
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN editable")
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN decided_edits")
    await run_sql(store, "DELETE FROM {additions} WHERE name = 'edits'")


async def drop_the_page_indexes(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before the pending pages' indexes left it
    (SQLite drops no column an index names)."""
    for name in ("page", "expiry", "function", "tool", "run"):
        await run_sql(store, f"DROP INDEX IF EXISTS {{requests}}_{name}")
    await run_sql(store, "DELETE FROM {additions} WHERE name = 'pending_pages'")


async def drop_the_grants(store: DurableStore) -> None:
    """Make ``store``'s database look as the release before grants and schedules left it."""
    await drop_the_page_indexes(store)  # an index of the tool column, which goes
    await run_sql(store, "DROP TABLE {grants}")
    await run_sql(store, "DROP TABLE {schedule}")
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN tool")
    await run_sql(store, "ALTER TABLE {requests} DROP COLUMN decided_grant")
    await run_sql(store, "DELETE FROM {additions} WHERE name IN ('grants', 'schedule', 'grant_columns')")


# -- issue 13: store URLs the CLI documents, and stores that are only opened, never created ------


def test_store_url_errors_name_the_form_expected_without_the_password() -> None:
    sqlite_form = "sqlite:///relative/file.db or sqlite:////absolute/file.db"
    for url in ("sqlite://host/file.db", "sqlite:///", "sqlite:///file.db?mode=ro"):
        with pytest.raises(ConfigurationError, match=re.escape(sqlite_form)):
            store_from_url(url)
    postgres_form = "postgresql://user:password@host:5432/database?schema=name"
    for url in (
        "postgresql://u:hunter2@[::1/app",  # not a URL at all
        "postgresql://u:hunter2@db.example:port/app",
        "postgresql://u:hunter2@db.example/app?schema=Fleet-1",
        "postgres://u:hunter2@db.example/app?schema=a&schema=b",
        "postgresql://u:hunter2@db.example/app?schema=",
    ):
        with pytest.raises(ConfigurationError, match=re.escape(postgres_form)) as caught:
            store_from_url(url)
        assert "hunter2" not in str(caught.value), url
    with pytest.raises(ConfigurationError, match="unsupported store URL") as caught:
        store_from_url("mysql://u:hunter2@db.example/app?password=hunter2")
    assert "hunter2" not in str(caught.value) and postgres_form in str(caught.value)


def test_postgres_store_takes_its_schema_from_the_dsn_or_the_argument_not_two_different_ones() -> None:
    assert PostgresStore("postgresql://db.example/app?schema=fleet").schema == "fleet"
    assert PostgresStore("postgresql://db.example/app").schema == "humanlayer"
    same = PostgresStore("postgresql://db.example/app?schema=fleet", schema="fleet")
    assert same.schema == "fleet"
    with pytest.raises(ConfigurationError, match="'fleet' in the DSN and 'other' as schema="):
        PostgresStore("postgresql://db.example/app?schema=fleet", schema="other")
    with pytest.raises(ConfigurationError, match="lowercase SQL identifier"):
        PostgresStore("postgresql://db.example/app?schema=Fleet%3B")


@pytest.mark.postgres
async def test_postgres_store_accepts_the_schema_parameter_of_the_cli_urls(
    pg_dsn: str, pg_schema: str
) -> None:
    # sslmode, like every other parameter, still reaches asyncpg; only schema is the store's.
    store = PostgresStore(f"{pg_dsn}?sslmode=disable&schema={pg_schema}")
    try:
        await store.create(make_request("u1"))
        assert store.schema == pg_schema and [r.id for r in await store.list_pending()] == ["u1"]
    finally:
        await store.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {pg_schema}.requests") == 1
    finally:
        await conn.close()


async def test_sqlite_store_with_create_false_never_creates_a_file_or_directory(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "approvals.db"
    for store in (SQLiteStore(missing, create=False), store_from_url(f"sqlite:///{missing}", create=False)):
        with pytest.raises(ConfigurationError, match=f"no store at {re.escape(str(missing))}"):
            await store.list_pending()
        await store.aclose()
    assert not missing.parent.exists()
    empty = tmp_path / "empty.db"  # a file, but not a store: not turned into one
    empty.touch()
    store = SQLiteStore(empty, create=False)
    with pytest.raises(ConfigurationError, match="no store at"):
        await store.list_pending()
    await store.aclose()
    assert empty.stat().st_size == 0
    created = SQLiteStore(tmp_path / "real.db")
    await created.create(make_request("c1"))
    await created.aclose()
    opened = SQLiteStore(tmp_path / "real.db", create=False)
    try:
        assert [r.id for r in await opened.list_pending()] == ["c1"]
    finally:
        await opened.aclose()


@pytest.mark.postgres
async def test_postgres_store_with_create_false_never_creates_a_schema(pg_dsn: str, pg_schema: str) -> None:
    parts = urlsplit(pg_dsn)  # a password in the URL (the test server trusts loopback: any works)
    password = parts.password or "hunter2"
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, query=f"schema={pg_schema}"))
    for store in (PostgresStore(pg_dsn, schema=pg_schema, create=False), store_from_url(url, create=False)):
        with pytest.raises(
            ConfigurationError, match=f"no store at postgresql://.*schema={pg_schema}"
        ) as caught:
            await store.list_pending()
        assert password not in str(caught.value)
        await store.aclose()
    assert not await pg_schema_exists(pg_dsn, pg_schema)
    conn = await asyncpg.connect(pg_dsn)
    try:  # a schema without the store's tables is not a store either
        await conn.execute(f"CREATE SCHEMA {pg_schema}")
    finally:
        await conn.close()
    store = PostgresStore(pg_dsn, schema=pg_schema, create=False)
    with pytest.raises(ConfigurationError, match="no store at"):
        await store.list_pending()
    await store.aclose()
    created = PostgresStore(pg_dsn, schema=pg_schema)
    await created.create(make_request("c1"))
    await created.aclose()
    opened = PostgresStore(pg_dsn, schema=pg_schema, create=False)
    try:
        assert [r.id for r in await opened.list_pending()] == ["c1"]
    finally:
        await opened.aclose()
