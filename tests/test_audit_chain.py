"""The audit trail's hash chains, on SQLite and PostgreSQL: a day of approvals verifies; an
entry modified, deleted, inserted or swapped in plain SQL is named by ``audit verify``; a key
defeats a recomputed hash; a head recorded elsewhere catches a chain cut short; concurrent
appends, exports, prune and databases from before the chains all verify."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from humanlayer_async import ConfigurationError, HumanLayer
from humanlayer_async._audit import make_entry
from humanlayer_async._codec import dumps
from humanlayer_async._models import Grant, Principal, Vote
from humanlayer_async.stores import SQLiteStore, store_from_url
from humanlayer_async.stores._chain import AUDIT_KEY_ENV, Head, chain_source, check_key, link
from humanlayer_async.stores._rows import epoch
from humanlayer_async.testing import wait_for_pending

from .conftest import decision, make_request
from .durable_helpers import run_cli

pytestmark = pytest.mark.anyio

APPROVERS = ["alice", "bob", "carol"]
KEY = "audit-key-kept-in-a-vault-0123456789"
HOUR = timedelta(hours=1)
OK = re.compile(
    r"ok: (\d+) entr(?:y|ies) in (\d+) chains?(?:, and (\d+) older ones? unchained)?\nhead: (\S+)\n"
)


@pytest.fixture(autouse=True)
def _no_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key of the developer's shell: each test says whether its trail is keyed."""
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)


class Database:
    """A store's database, written with plain SQL as an intruder would: ``{audit}``,
    ``{requests}``, ``{grants}`` (PostgreSQL's) and ``{additions}`` name its tables, ``?``
    marks parameters."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite:")
        dsn, _, schema = url.partition("?schema=")
        self.dsn, self.schema = dsn, schema

    def _sql(self, statement: str) -> str:
        if self.sqlite:
            return statement.format(audit="hl_audit", requests="hl_requests", additions="hl_additions")
        tables = {name: f"{self.schema}.{name}" for name in ("audit", "requests", "grants", "additions")}
        numbered = iter(range(1, statement.count("?") + 1))
        return re.sub(r"\?", lambda _: f"${next(numbered)}", statement.format(**tables))

    async def fetch(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        if self.sqlite:
            with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"))) as db, db:
                db.row_factory = sqlite3.Row
                return [dict(row) for row in db.execute(self._sql(statement), args)]
        conn = await asyncpg.connect(self.dsn)
        try:
            return [dict(row) for row in await conn.fetch(self._sql(statement), *args)]
        finally:
            await conn.close()

    async def execute(self, statement: str, *args: Any) -> None:
        await self.fetch(statement, *args)

    async def chain(self, request_id: str) -> list[dict[str, Any]]:
        """The chain's rows, oldest first."""
        return await self.fetch("SELECT * FROM {audit} WHERE request_id = ? ORDER BY seq", request_id)

    def at(self, row: dict[str, Any]) -> datetime:
        """A row's time as the hash covers it."""
        return epoch(row["at"]) if self.sqlite else row["at"]


async def verify(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli("audit", "verify", "--store", url, *args, env=env)


async def verified(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, int, int, str]:
    """``audit verify`` passed: (entries, chains, older unchained entries, head)."""
    code, out, err = await verify(url, *args, env=env)
    assert code == 0, err
    match = OK.fullmatch(out)
    assert match is not None, out
    return int(match[1]), int(match[2]), int(match[3] or 0), match[4]


async def refused(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """``audit verify`` failed with exit status 1: its message."""
    code, out, err = await verify(url, *args, env=env)
    assert (code, out) == (1, ""), (code, out, err)
    return err


async def run_a_day(url: str) -> dict[str, str]:
    """Requests approved, denied, voted on by two approvers and covered by a grant, the grant
    given and revoked, through a ``HumanLayer`` on ``url``: their ids."""
    ids: dict[str, str] = {}
    async with HumanLayer([], store=url, listen=None) as hl:

        @hl.require_approval(approvers=APPROVERS, on_reject="return")
        async def refund(amount: int) -> str:
            return f"refunded {amount}"

        @hl.require_approval(approvers=APPROVERS, approvals=2, on_reject="return")
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        async def answered(call: Any, *votes: tuple[bool, str]) -> str:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                [request] = await wait_for_pending(hl)
                for approved, by in votes:
                    await hl.decide(request.id, approved, by=by, comment=f"{by} looked")
            return request.id

        ids["approved"] = await answered(lambda: refund(5), (True, "alice"))
        ids["denied"] = await answered(lambda: refund(6), (False, "bob"))
        ids["voted"] = await answered(lambda: deploy("v2"), (True, "alice"), (True, "bob"))
        grant = await hl.grant(refund, by="alice", expires_in=HOUR)
        assert await refund(7) == "refunded 7"  # covered: nobody asked
        await hl.revoke_grant(grant.id, by="bob")
        ids["grant"] = grant.id
    return ids


async def test_a_day_of_approvals_verifies_and_the_chains_are_what_was_done(store_url: str) -> None:
    ids = await run_a_day(store_url)
    db = Database(store_url)
    voted = await db.chain(ids["voted"])
    assert [row["event"] for row in voted] == [
        "approval.requested",
        "approval.voted",
        "approval.voted",
        "approval.decided",
        "approval.executing",
        "approval.executed",
    ]
    assert voted[0]["prev"] is None
    assert [row["prev"] for row in voted[1:]] == [row["hash"] for row in voted[:-1]]
    assert all(row["hash"].startswith("sha256:") for row in voted)
    assert [row["event"] for row in await db.chain(ids["grant"])] == ["grant.given", "grant.revoked"]
    # approved 4, denied 2, voted 6, the call the grant covered 4, the grant 2
    entries, chains, unchained, head = await verified(store_url)
    assert (entries, chains, unchained) == (18, 5, 0)
    [newest] = await db.fetch("SELECT max(seq) AS seq FROM {audit}")
    assert head.startswith(f"{newest['seq']}:")


async def _modify(db: Database, chain: list[dict[str, Any]]) -> str:
    fields = json.loads(chain[3]["fields"])
    await db.execute(
        "UPDATE {audit} SET fields = ? WHERE seq = ?",
        json.dumps({**fields, "by": "mallory"}),
        chain[3]["seq"],
    )
    return "entry 4 of 6 (approval.decided at …) was modified: its content no longer matches its hash"


async def _delete(db: Database, chain: list[dict[str, Any]]) -> str:
    await db.execute("DELETE FROM {audit} WHERE seq = ?", chain[2]["seq"])  # bob's vote
    return (
        "entry 3 of 5 (approval.decided at …) does not follow the entry before it:"
        " an entry between them was deleted"
    )


async def _insert(db: Database, chain: list[dict[str, Any]]) -> str:
    """A vote forged between the two real ones (the later entries moved up to make room), with
    the previous entry's hash as its ``prev`` and a made-up hash."""
    first = chain[1]
    await db.execute(
        "UPDATE {audit} SET seq = seq + 1000 WHERE request_id = ? AND seq > ?",
        first["request_id"],
        first["seq"],
    )
    fields = json.dumps({**json.loads(first["fields"]), "by": "mallory"})
    await db.execute(
        "INSERT INTO {audit} (seq, request_id, event, at, fields, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
        first["seq"] + 1,
        first["request_id"],
        "approval.voted",
        first["at"],
        fields,
        first["hash"],
        "sha256:" + "0" * 64,
    )
    return "entry 3 of 7 (approval.voted at …) was inserted: the entry after it follows the one before it"


async def _insert_hashed(db: Database, chain: list[dict[str, Any]]) -> str:
    """A vote forged between the two real ones with the very hash the store would compute."""
    first = chain[1]
    await db.execute(
        "UPDATE {audit} SET seq = seq + 1000 WHERE request_id = ? AND seq > ?",
        first["request_id"],
        first["seq"],
    )
    fields = dumps({**json.loads(first["fields"]), "by": "mallory"}, "fields")
    digest = link(None, first["hash"], "approval.voted", first["request_id"], db.at(first), fields)
    await db.execute(
        "INSERT INTO {audit} (seq, request_id, event, at, fields, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
        first["seq"] + 1,
        first["request_id"],
        "approval.voted",
        first["at"],
        fields,
        first["hash"],
        digest,
    )
    return "entry 3 of 7 (approval.voted at …) was inserted: the entry after it follows the one before it"


async def _swap(db: Database, chain: list[dict[str, Any]]) -> str:
    """The two votes' content swapped (event, time, fields), their hashes left where they were."""
    for row, other in ((chain[1], chain[2]), (chain[2], chain[1])):
        await db.execute(
            "UPDATE {audit} SET at = ?, fields = ? WHERE seq = ?", other["at"], other["fields"], row["seq"]
        )
    return "entry 2 of 6 (approval.voted at …) holds what entry 3 was written with: entries were swapped"


@pytest.mark.parametrize("tamper", [_modify, _delete, _insert, _insert_hashed, _swap])
async def test_an_entry_modified_deleted_inserted_or_swapped_in_sql_is_named(
    store_url: str, tamper: Any
) -> None:
    ids = await run_a_day(store_url)
    db = Database(store_url)
    chain = await db.chain(ids["voted"])
    expected = await tamper(db, chain)
    err = await refused(store_url)
    pattern = re.escape(f"audit verify: request {ids['voted']}: {expected}").replace("…", "[^)]*")
    assert re.search(pattern, err), err
    assert err.count("\n") == 1  # one line: the first problem


async def test_with_a_key_a_recomputed_plain_hash_does_not_pass(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    ids = await run_a_day(store_url)
    keyed = {AUDIT_KEY_ENV: KEY}
    await verified(store_url, env=keyed)
    db = Database(store_url)
    chain = await db.chain(ids["denied"])
    assert all(row["hash"].startswith("hmac-sha256:") for row in chain)

    code, _, err = await verify(store_url, env={AUDIT_KEY_ENV: ""})
    assert code == 2 and f"the audit trail is keyed (HMAC-SHA256): set {AUDIT_KEY_ENV}" in err

    # Approved, not denied: the decision's fields changed and its hash recomputed as SHA-256 would
    # make it (which anyone who can write to the database can do), then passed off as an HMAC.
    decided = chain[1]
    fields = dumps({**json.loads(decided["fields"]), "status": "approved"}, "fields")
    plain = link(None, decided["prev"], decided["event"], decided["request_id"], db.at(decided), fields)
    await db.execute("UPDATE {audit} SET fields = ?, hash = ? WHERE seq = ?", fields, plain, decided["seq"])
    err = await refused(store_url, env=keyed)
    assert f"request {ids['denied']}: entry 2 of 2 (approval.decided" in err
    assert "is not hashed with the audit key" in err
    forged = "hmac-sha256:" + plain.removeprefix("sha256:")
    await db.execute("UPDATE {audit} SET hash = ? WHERE seq = ?", forged, decided["seq"])
    err = await refused(store_url, env=keyed)
    assert f"request {ids['denied']}: entry 2 of 2 (approval.decided" in err and "was modified" in err


async def test_without_a_key_a_rewritten_chain_passes_and_only_a_recorded_head_catches_it(
    store_url: str,
) -> None:
    """What the documentation says a plain SHA-256 chain does not catch, and what does."""
    ids = await run_a_day(store_url)
    *_, head = await verified(store_url)
    db = Database(store_url)
    chain = await db.chain(ids["denied"])
    decided = chain[1]
    fields = dumps({**json.loads(decided["fields"]), "status": "approved"}, "fields")
    rewritten = link(None, decided["prev"], decided["event"], decided["request_id"], db.at(decided), fields)
    await db.execute(
        "UPDATE {audit} SET fields = ?, hash = ? WHERE seq = ?", fields, rewritten, decided["seq"]
    )
    await verified(store_url)
    err = await refused(store_url, "--expect-head", head)
    assert f"the trail no longer holds the head recorded at seq {head.split(':')[0]}" in err


async def test_a_chain_cut_short_passes_alone_and_fails_against_the_head_recorded_before(
    store_url: str,
) -> None:
    ids = await run_a_day(store_url)
    entries, chains, _, head = await verified(store_url)
    db = Database(store_url)
    # The trail grows: the recorded head still holds.
    store = store_from_url(store_url)
    try:
        await store.create(make_request("later"))
        await store.decide(decision("later", True, "carol"))
    finally:
        await store.aclose()
    assert (await verified(store_url, "--expect-head", head))[:2] == (entries + 2, chains + 1)

    newest = (await db.chain(ids["voted"]))[-1]
    await db.execute("DELETE FROM {audit} WHERE seq = ?", newest["seq"])  # "executed": it never ran
    assert (await verified(store_url))[:2] == (entries + 1, chains + 1)
    err = await refused(store_url, "--expect-head", head)
    assert "the trail no longer holds the head recorded at seq" in err and "cut off" in err

    # The newest entries of the whole trail gone: the head is past its end.
    await db.execute("DELETE FROM {audit} WHERE seq >= ?", int(head.split(":")[0]))
    err = await refused(store_url, "--expect-head", head)
    assert f"before the recorded head's seq {head.split(':')[0]}" in err

    code, _, err = await verify(store_url, "--expect-head", "12:not-a-head")
    assert code == 2 and "is not a head" in err


async def test_concurrent_appends_to_one_chain_from_two_handles_leave_chains_that_verify(
    store_url: str,
) -> None:
    """Entries of one request recorded and voted from two handles (two processes' worth of
    connections) at once; a grant confirmed, recorded on and revoked at once; and a chain that
    no row keeps (its request unknown here)."""
    handles = (store_from_url(store_url), store_from_url(store_url))
    try:
        await handles[0].create(make_request("busy", approvers=()))
        now = datetime.now(UTC)
        grant = Grant("g1", "payments.refund", None, ("ann",), now, now + HOUR, approvals=50, users=(None,))
        await handles[1].add_grant(grant)
        calls = 30
        async with anyio.create_task_group() as tg:
            for index in range(calls):
                store = handles[index % 2]
                tg.start_soon(store.record, make_entry("approval.delivered", "busy", channel=f"c{index}"))
                tg.start_soon(store.vote, "busy", Vote(f"p{index}", True, "api", None, now), 1000)
                tg.start_soon(store.record, make_entry("approval.reminded", "g1", reminder=index))
                tg.start_soon(store.confirm_grant, "g1", Principal(f"p{index}"))
                tg.start_soon(store.record, make_entry("approval.executed", "unknown", outcome=f"{index}"))
        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(handles[index % 2].decide, decision("busy", True, f"d{index}"))
                tg.start_soon(handles[index % 2].revoke_grant, "g1", f"r{index}")
    finally:
        for store in handles:
            await store.aclose()
    db = Database(store_url)
    busy = await db.chain("busy")
    assert len(busy) == 1 + 2 * calls + 1  # requested, delivered and voted, one decision
    assert [row["prev"] for row in busy[1:]] == [row["hash"] for row in busy[:-1]]
    assert len(await db.chain("g1")) == 1 + 2 * calls + 1  # given, confirmed and reminded, revoked
    assert len(await db.chain("unknown")) == calls
    assert (await verified(store_url))[:3] == (len(busy) * 2 + calls, 3, 0)


@pytest.mark.postgres
async def test_a_postgres_trail_is_read_once_no_open_transaction_can_add_an_entry_before_its_end(
    pg_dsn: str, pg_schema: str
) -> None:
    """Sequence numbers are taken at insert, not at commit: an entry still being written holds
    a lower one than an entry committed after it. The trail (and its head) waits for it."""
    store = store_from_url(f"{pg_dsn}?schema={pg_schema}")
    writer = await asyncpg.connect(pg_dsn)
    try:
        await store.open()
        transaction = writer.transaction()
        await transaction.start()
        slow = await writer.fetchval(
            f"INSERT INTO {pg_schema}.audit (request_id, event, at, fields) VALUES"
            " ('slow', 'approval.delivered', now(), '{}') RETURNING seq"
        )
        await store.record(make_entry("approval.delivered", "fast", channel="web"))  # committed after
        read: list[int] = []
        done = anyio.Event()

        async def read_the_trail() -> None:
            read.extend([entry.seq async for entry in chain_source(store).audit_chain()])
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_the_trail)
            with anyio.move_on_after(0.5):
                await done.wait()
            assert not done.is_set()  # still waiting for the open transaction
            await transaction.commit()
        assert sorted(read) == [slow, slow + 1]
    finally:
        await writer.close()
        await store.aclose()


async def test_an_export_verifies_without_the_database_and_an_edited_line_is_caught(
    store_url: str, tmp_path: Path
) -> None:
    ids = await run_a_day(store_url)
    *_, head = await verified(store_url)
    code, out, err = await run_cli("audit", "export", "--format", "jsonl", "--store", store_url)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 18 and all(line.isascii() for line in lines)
    order = [json.loads(line)["request_id"] for line in lines]
    assert order == sorted(order, key=order.index)  # chain by chain
    export = tmp_path / "trail.jsonl"
    export.write_text(out)
    code, shown, err = await run_cli("audit", "verify", "--file", str(export), "--expect-head", head)
    assert code == 0, err
    assert shown == f"ok: 18 entries in 5 chains\nhead: {head}\n"

    entries = [json.loads(line) for line in lines]
    denied = next(index for index, entry in enumerate(entries) if entry["request_id"] == ids["denied"])
    entries[denied + 1]["fields"]["status"] = "approved"
    export.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    code, _, err = await run_cli("audit", "verify", "--file", str(export))
    assert (
        code == 1
        and f"request {ids['denied']}: entry 2 of 2 (approval.decided" in err
        and "was modified" in err
    )

    voted = next(index for index, entry in enumerate(entries) if entry["request_id"] == ids["voted"])
    swapped = [*lines[: voted + 1], lines[voted + 2], lines[voted + 1], *lines[voted + 3 :]]
    export.write_text("\n".join(swapped) + "\n")  # the two votes' lines, hashes and all
    code, _, err = await run_cli("audit", "verify", "--file", str(export))
    assert code == 1 and f"request {ids['voted']}: entry 2 of 6 (approval.voted" in err
    assert "is out of order: it follows an entry stored after it" in err

    export.write_text("\n".join([*lines[1:], lines[0]]) + "\n")  # a chain's first entry moved last
    code, _, err = await run_cli("audit", "verify", "--file", str(export))
    assert code == 1 and "lines were moved" in err

    export.write_text(lines[0] + "\n{not json\n")
    code, _, err = await run_cli("audit", "verify", "--file", str(export))
    assert code == 1 and "line 2 is not an audit export line" in err


async def test_prune_keeps_the_trail_and_it_verifies_after(store_url: str) -> None:
    ids = await run_a_day(store_url)
    entries, chains, _, _ = await verified(store_url)
    code, out, _ = await run_cli("prune", "--older-than", "0s", "--store", store_url)
    assert code == 0 and out == "pruned 4 decided requests\n"
    assert (await verified(store_url))[:2] == (entries, chains)
    store = store_from_url(store_url)  # an entry for a request pruned meanwhile chains on
    try:
        await store.record(make_entry("approval.executed", ids["approved"], outcome="late"))
    finally:
        await store.aclose()
    assert (await verified(store_url))[:2] == (entries + 1, chains)


async def test_a_store_from_before_the_chains_verifies_from_each_chains_first_hash(
    store_url: str,
) -> None:
    """An existing database gains the columns; its older entries are counted, not checked; an
    entry without a hash written after the chains began is caught."""
    store = store_from_url(store_url)
    try:
        await store.create(make_request("old"))
        await store.create(make_request("old-decided"))
        await store.decide(decision("old-decided", False, "bob"))
    finally:
        await store.aclose()
    db = Database(store_url)
    await db.execute("ALTER TABLE {audit} DROP COLUMN prev")
    await db.execute("ALTER TABLE {audit} DROP COLUMN hash")
    if not db.sqlite:
        await db.execute("ALTER TABLE {requests} DROP COLUMN audit_head")
        await db.execute("ALTER TABLE {grants} DROP COLUMN audit_head")
    await db.execute("DELETE FROM {additions} WHERE name = 'audit_chain'")

    store = store_from_url(store_url)
    try:
        await store.record(make_entry("approval.reminded", "old", reminder=1))
        await store.decide(decision("old", True, "alice"))
        await store.create(make_request("new"))
    finally:
        await store.aclose()
    assert (await verified(store_url))[:3] == (3, 2, 3)

    old = await db.chain("old")
    await db.execute(
        "INSERT INTO {audit} (request_id, event, at, fields) VALUES (?, ?, ?, ?)",
        "old-decided",
        "approval.executed",
        old[-1]["at"],
        '{"outcome":"ok"}',
    )
    err = await refused(store_url)
    assert "request old-decided: entry 3 of 3 (approval.executed" in err
    assert f"has no hash, though the trail is chained from seq {old[1]['seq']} on" in err


def test_an_audit_key_is_a_secret_of_16_bytes_or_more(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least 16 bytes") as raised:
        SQLiteStore(tmp_path / "a.db", audit_key="short-key")
    assert "short-key" not in str(raised.value)
    assert check_key(KEY) == KEY.encode()
    assert Head.parse(f"12:{'a' * 64}") == Head(12, "a" * 64)
    with pytest.raises(ValueError, match="is not a head"):
        Head.parse("12:abc")
