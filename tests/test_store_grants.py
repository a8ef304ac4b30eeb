"""Scheduled steps (reminders, escalations) and grants: the Store contract, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from humanlayer_async import Decision, Status, UnknownRequest
from humanlayer_async._audit import make_entry
from humanlayer_async._exceptions import UnknownGrant
from humanlayer_async._models import Grant, Principal, Vote
from humanlayer_async.stores import Store, StoreEvent
from humanlayer_async.stores.base import Step

from . import test_stores
from .conftest import decision, make_request

pytestmark = pytest.mark.anyio

# The fixtures of the stores' conformance tests: each store, two handles on it.
any_store_url, two, durable_two = test_stores.any_store_url, test_stores.two, test_stores.durable_two

TOOL = "payments.transfer"


def _now() -> datetime:
    """Now, to the second: what every store keeps exactly."""
    return datetime.now(UTC).replace(microsecond=0)


def _grant(
    grant_id: str,
    *,
    function: str = TOOL,
    where: dict[str, object] | None = None,
    by: tuple[str, ...] = ("alice@x.com",),
    users: tuple[str | None, ...] | None = None,
    age: timedelta = timedelta(0),
    lifetime: timedelta = timedelta(hours=1),
    max_uses: int | None = None,
    approvals: int = 1,
    approvers: tuple[str, ...] = (),
) -> Grant:
    """A grant given ``age`` ago for ``lifetime``."""
    created = _now() - age
    return Grant(
        id=grant_id,
        function=function,
        where=where,
        by=by,
        created_at=created,
        expires_at=created + lifetime,
        max_uses=max_uses,
        approvals=approvals,
        approvers=approvers,
        users=(None,) * len(by) if users is None else users,
    )


# -- steps: reminders and escalations, each carried out by one process of a fleet ----------------


async def test_steps_are_scheduled_once_and_scheduling_again_keeps_the_stored_ones(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("s1"))
    soon, later = _now() + timedelta(minutes=5), _now() + timedelta(hours=1)
    await first.schedule("s1", [Step("escalate", later), Step("remind", soon)])
    # A re-attaching process schedules the same steps again from its own clock: the stored ones
    # carry on; a step it adds is stored.
    await second.schedule(
        "s1", [Step("remind", soon + timedelta(minutes=1)), Step("escalate", None), Step("retry", soon)]
    )
    assert await first.steps("s1") == [Step("escalate", later), Step("remind", soon), Step("retry", soon)]
    assert await second.steps("s1") == await first.steps("s1")
    await second.create(make_request("s2"))
    assert await first.steps("s2") == []
    with pytest.raises(UnknownRequest):
        await second.schedule("nowhere", [Step("remind", soon)])


async def test_a_due_step_is_taken_once_per_lease_and_done_moves_it_on(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.create(make_request("t1"))
    past, later = _now() - timedelta(seconds=1), _now() + timedelta(hours=1)
    await first.schedule("t1", [Step("escalate", past), Step("remind", past), Step("retry", later)])
    lease = timedelta(seconds=1)  # long enough for a loaded machine's next statement to fall inside it
    assert await first.take("t1", "retry", lease) is None  # not due yet
    assert await first.take("t1", "nothing", lease) is None  # no such step

    assert await first.take("t1", "remind", lease) == 0
    assert await second.take("t1", "remind", lease) is None  # leased to the first
    leased = (await second.steps("t1"))[1]
    assert (leased.name, leased.number, leased.due_at) == ("remind", 0, past)
    assert leased.lease_until is not None and leased.lease_until > past
    await anyio.sleep(1.1)
    # The first died before done: its lease expired, and the step is taken again.
    assert await second.take("t1", "remind", lease) == 0
    await second.done("t1", "remind", 0, past)  # carried out, due again at once
    assert (await first.steps("t1"))[1] == Step("remind", past, 1)
    await first.done("t1", "remind", 0, None)  # a stale number: step 0 was done already
    assert (await second.steps("t1"))[1] == Step("remind", past, 1)
    assert await first.take("t1", "remind", timedelta(minutes=1)) == 1
    await first.done("t1", "remind", 1, later)
    assert await second.take("t1", "remind", lease) is None  # not due until later
    assert (await second.steps("t1"))[1] == Step("remind", later, 2)

    assert await second.take("t1", "escalate", timedelta(minutes=1)) == 0
    await second.done("t1", "escalate", 0, None)  # done for good
    assert await first.take("t1", "escalate", lease) is None
    assert await first.steps("t1") == [
        Step("escalate", None, 1),
        Step("remind", later, 2),
        Step("retry", later),
    ]


async def test_of_twenty_concurrent_takes_across_handles_exactly_one_wins(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("r1"))
    await first.schedule("r1", [Step("remind", _now() - timedelta(seconds=1), number=3)])
    taken: list[int | None] = []

    async def take(store: Store) -> None:
        taken.append(await store.take("r1", "remind", timedelta(minutes=1)))

    async with anyio.create_task_group() as tg:
        for index in range(20):
            tg.start_soon(take, (first, second)[index % 2])
    assert len(taken) == 20 and taken.count(3) == 1 and taken.count(None) == 19


async def test_escalation_widens_the_approvers_once_each_in_order_with_its_audit_entry(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("e1", approvers=("cfo", "ops@x.com")))
    await first.create(make_request("e2", approvers=()))
    await first.create(make_request("e3"))
    widened = await second.escalate(
        "e1", ("ceo", "cfo", "cto"), make_entry("approval.escalated", "e1", approvers=["ceo", "cto"])
    )
    assert widened.approvers == ("cfo", "ops@x.com", "ceo", "cto")
    assert (await first.get("e1")).approvers == widened.approvers
    again = await first.escalate("e1", ("cto", "ceo"), make_entry("approval.escalated", "e1", approvers=[]))
    assert again.approvers == widened.approvers and again.status is Status.PENDING

    # Anyone may decide a request without approvers: escalating it leaves it so.
    emptied = await second.escalate("e2", ("ceo",), make_entry("approval.escalated", "e2", approvers=[]))
    assert emptied.approvers == () and (await first.get("e2")).approvers == ()

    # Once decided, nothing changes and nothing is written.
    approved = await first.decide(decision("e3", True, "cfo"))
    late = await second.escalate("e3", ("ceo",), make_entry("approval.escalated", "e3", approvers=["ceo"]))
    assert (late.approvers, late.decision) == (("cfo",), approved)

    entries = await first.history(request_id="e1")
    assert [e.event for e in entries] == ["approval.requested", "approval.escalated", "approval.escalated"]
    assert entries[1].fields == {"approvers": ["ceo", "cto"]}
    assert [e.event for e in await second.history(request_id="e2")] == [
        "approval.requested",
        "approval.escalated",
    ]
    assert [e.event for e in await second.history(request_id="e3")] == [
        "approval.requested",
        "approval.decided",
    ]
    with pytest.raises(UnknownRequest):
        await first.escalate("nowhere", ("ceo",), make_entry("approval.escalated", "nowhere"))


# -- grants: calls of one tool that run without asking, for a while ----------------------------


async def test_grants_are_listed_oldest_first_confirmed_once_per_person_and_revoked_by_the_first(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    expired = _grant("g0", age=timedelta(hours=2))
    older = _grant("g1", age=timedelta(minutes=2))
    waiting = _grant(
        "g2",
        by=("Bob@x.com",),
        users=("U0BOB",),
        age=timedelta(minutes=1),
        approvals=2,
        approvers=("bob@x.com", "carol@x.com"),
    )
    other = _grant("g3", function="payments.refund", where={"currency": "EUR"}, max_uses=10)
    for grant in (expired, older, waiting, other):
        await first.add_grant(grant)
    assert await second.grants() == [older, waiting, other]  # live: g2 waits for a second granter
    assert await second.grants(function=TOOL) == [older, waiting]
    assert await first.grants(active=False) == [expired, older, waiting, other]
    assert await first.grants(function="payments.refund", active=False) == [other]

    # The same person again, by their email in another case or by their Slack id: counted once.
    assert await first.confirm_grant("g2", Principal("bob@X.com")) == waiting
    assert await second.confirm_grant("g2", Principal("robert@x.com", user="U0BOB")) == waiting
    confirmed = await second.confirm_grant("g2", Principal("carol@x.com", user="U0CAROL"))
    assert (confirmed.by, confirmed.users, confirmed.confirmed) == (
        ("Bob@x.com", "carol@x.com"),
        ("U0BOB", "U0CAROL"),
        True,
    )
    assert await first.grants(function=TOOL) == [older, confirmed]

    before = datetime.now(UTC)
    revoked = await first.revoke_grant("g1", "carol@x.com")
    assert revoked.revoked_by == "carol@x.com" and revoked.revoked_at is not None
    assert abs(revoked.revoked_at - before) < timedelta(seconds=5)
    assert await second.revoke_grant("g1", "dave@x.com") == revoked  # the first revoker stays
    assert await second.grants() == [confirmed, other]
    assert await first.grants(active=False) == [expired, revoked, confirmed, other]

    with pytest.raises(UnknownGrant):
        await first.confirm_grant("nowhere", Principal("bob@x.com"))
    with pytest.raises(UnknownGrant):
        await second.revoke_grant("nowhere", "bob@x.com")


async def test_giving_confirming_and_revoking_a_grant_are_audited_under_its_id(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    grant = _grant("g1", where={"to": "DE02"}, max_uses=3, approvals=2)
    await first.add_grant(grant)
    await second.confirm_grant("g1", Principal("Alice@X.com"))  # alice counts once: no entry
    await second.confirm_grant("g1", Principal("bob@x.com"))
    used = await first.use_grant(TOOL, {"to": "DE02"}, None)  # a use is not audited here
    assert used is not None and used.uses == 1
    await first.revoke_grant("g1", "carol@x.com")
    await second.revoke_grant("g1", "dave@x.com")  # revoked already: no entry
    entries = await second.history(request_id="g1")
    assert [(e.event, e.fields["by"]) for e in entries] == [
        ("grant.given", "alice@x.com"),
        ("grant.confirmed", "bob@x.com"),
        ("grant.revoked", "carol@x.com"),
    ]
    assert entries[0].fields == {
        "function": TOOL,
        "by": "alice@x.com",
        "where": {"to": "DE02"},
        "expires_at": grant.expires_at.isoformat(),
        "max_uses": 3,
        "approvals": 2,
    }
    assert entries[1].fields == {"function": TOOL, "by": "bob@x.com", "granters": 2}
    assert entries[2].fields == {"function": TOOL, "by": "carol@x.com"}


async def test_a_grant_covers_calls_whose_arguments_equal_its_values_as_json(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.add_grant(_grant("one", where={"amount": 1}))
    await first.add_grant(_grant("float", function="payments.rate", where={"rate": 1.0}))
    await first.add_grant(
        _grant("flag", function="ops.page", where={"urgent": True, "to": {"a": 1, "b": None}})
    )
    await first.add_grant(_grant("any", function="ops.restart"))
    for kwargs in ({"amount": 1.0}, {"amount": True}, {"amount": "1"}, {"to": "DE02"}, {"amount": object()}):
        assert await second.use_grant(TOOL, kwargs, None) is None, kwargs
    assert await second.use_grant("payments.refund", {"amount": 1}, None) is None  # another tool
    used = await second.use_grant(TOOL, {"amount": 1, "to": "DE02"}, None)
    assert used is not None and (used.id, used.uses) == ("one", 1)

    assert await first.use_grant("payments.rate", {"rate": 1}, None) is None
    assert (await first.use_grant("payments.rate", {"rate": 1.0}, None)) is not None
    assert await first.use_grant("ops.page", {"urgent": 1, "to": {"b": None, "a": 1}}, None) is None
    paged = await first.use_grant("ops.page", {"urgent": True, "to": {"b": None, "a": 1}}, None)
    assert paged is not None and paged.id == "flag"
    restarted = await second.use_grant("ops.restart", {"service": "api"}, "carol@x.com")
    assert restarted is not None and restarted.id == "any"
    assert {g.id: g.uses for g in await first.grants(active=False)} == {
        "one": 1,
        "float": 1,
        "flag": 1,
        "any": 1,
    }


async def test_expired_revoked_unconfirmed_and_used_up_grants_cover_nothing(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.add_grant(_grant("expired", function="a.expired", age=timedelta(hours=2)))
    await first.add_grant(_grant("revoked", function="a.revoked"))
    await first.revoke_grant("revoked", "bob@x.com")
    await first.add_grant(_grant("unconfirmed", function="a.unconfirmed", approvals=2))
    await first.add_grant(_grant("once", function="a.once", max_uses=1))
    for function in ("a.expired", "a.revoked", "a.unconfirmed"):
        assert await second.use_grant(function, {"amount": 5}, None) is None, function
    once = await second.use_grant("a.once", {"amount": 5}, None)
    assert once is not None and (once.uses, once.max_uses) == (1, 1)
    assert await first.use_grant("a.once", {"amount": 5}, None) is None  # used up
    await second.confirm_grant("unconfirmed", Principal("bob@x.com"))
    now_confirmed = await first.use_grant("a.unconfirmed", {"amount": 5}, None)
    assert now_confirmed is not None and now_confirmed.by == ("alice@x.com", "bob@x.com")
    assert {g.id: g.uses for g in await second.grants(active=False)} == {
        "expired": 0,
        "revoked": 0,
        "unconfirmed": 1,
        "once": 1,
    }


async def test_a_grant_never_covers_a_call_made_for_one_of_its_granters(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.add_grant(_grant("g1", by=("Alice@x.com",), users=("U0ALICE",), approvals=2))
    await first.confirm_grant("g1", Principal("bob@x.com"))
    for requester in ("alice@x.com", "ALICE@X.COM", "U0ALICE", "bob@x.com"):
        assert await second.use_grant(TOOL, {"amount": 5}, requester) is None, requester
    for_carol = await second.use_grant(TOOL, {"amount": 5}, "carol@x.com")
    assert for_carol is not None and for_carol.uses == 1
    for_nobody_known = await first.use_grant(TOOL, {"amount": 5}, None)
    assert for_nobody_known is not None and for_nobody_known.uses == 2


async def test_forty_concurrent_uses_across_handles_never_exceed_max_uses(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.add_grant(_grant("g1", max_uses=5))
    used: list[Grant | None] = []

    async def use(store: Store) -> None:
        used.append(await store.use_grant(TOOL, {"amount": 5}, None))

    async with anyio.create_task_group() as tg:
        for index in range(40):
            tg.start_soon(use, (first, second)[index % 2])
    assert len(used) == 40
    assert sorted(g.uses for g in used if g is not None) == [1, 2, 3, 4, 5]  # each use counted once
    [stored] = await second.grants(active=False)
    assert stored.uses == 5 and await first.grants() == []  # used up: no longer live


async def test_watch_yields_grants_given_confirmed_and_revoked_through_another_handle(
    durable_two: tuple[Store, Store],
) -> None:
    first, second = durable_two
    await first.list_pending()  # connected (PostgreSQL: listening) before anything is written
    seen: list[StoreEvent] = []

    async def follow() -> None:
        async for event in first.watch():
            seen.append(event)
            if event == StoreEvent("requested", "end"):
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.3)
            await second.add_grant(_grant("g1", approvals=2))
            await second.confirm_grant("g1", Principal("bob@x.com"))
            await second.confirm_grant("g1", Principal("bob@x.com"))  # changes nothing
            await second.use_grant(TOOL, {"amount": 5}, None)
            await second.revoke_grant("g1", "carol@x.com")
            await second.revoke_grant("g1", "dave@x.com")  # changes nothing
            await second.create(make_request("end"))
    assert seen == [StoreEvent("granted", "g1")] * 3 + [StoreEvent("requested", "end")]


async def test_the_tool_of_a_request_the_grant_that_decided_it_and_the_grants_of_votes_are_kept(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    await first.create(make_request("d1", tool=TOOL))
    at = _now()
    by_grant = Decision("d1", True, Status.APPROVED, "alice@x.com", "grant", None, at, grant="g1")
    assert await second.decide(by_grant) == by_grant
    stored = await first.get("d1")
    assert stored.tool == TOOL and stored.decision == by_grant
    assert stored.decision is not None and stored.decision.grant == "g1"

    await first.create(make_request("d2", approvals=2, tool="payments.refund"))
    [pending] = await second.list_pending()
    assert (pending.id, pending.tool) == ("d2", "payments.refund")
    alice = Vote("alice@x.com", True, "slack", None, at, "U0ALICE", grant=3600.0)
    await first.vote("d2", alice, 2)
    assert (await second.get("d2")).votes == (alice,)
    bob = Vote("bob@x.com", True, "api", "ok", at, grant=1800.0)
    made = (await second.vote("d2", bob, 2)).decision
    assert made is not None and made.votes == (alice, bob) and made.grant is None
    decided = await first.get("d2")
    assert decided.decision == made and decided.votes == (alice, bob)
    await first.create(make_request("d3"))
    assert (await second.get("d3")).tool is None


async def test_prune_deletes_grants_expired_past_the_retention_and_the_steps_of_pruned_requests(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    stale = _grant("stale", age=timedelta(minutes=90))  # expired half an hour ago
    live = _grant("live")
    await first.add_grant(stale)
    await first.add_grant(live)
    soon = _now() + timedelta(minutes=5)
    for request_id in ("done", "open"):
        await first.create(make_request(request_id))
        await first.schedule(request_id, [Step("remind", soon)])
    await first.decide(decision("done", True, "alice"))
    assert await first.prune() == 0  # within every store's default retention
    assert await second.grants(active=False) == [stale, live]
    await anyio.sleep(0.05)
    assert await second.prune(timedelta(seconds=0.01)) == 1
    assert await first.grants(active=False) == [live]
    assert await first.steps("done") == []
    assert await second.steps("open") == [Step("remind", soon)]
    assert [e.event for e in await first.history(request_id="stale")] == ["grant.given"]  # kept
