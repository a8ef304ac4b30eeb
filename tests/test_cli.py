"""``humanlayer-async`` operator commands and ``serve``, run as a user runs them (processes)."""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
from pathlib import Path

import anyio
import httpx
import pytest

from humanlayer_async import HumanLayer, Status
from humanlayer_async.channels.web import TOKEN_ENV, WebChannel
from humanlayer_async.stores import store_from_url

from .conftest import make_request
from .durable_helpers import ROOT, cli_command, pg_schema_exists, run_cli

pytestmark = pytest.mark.anyio


async def seed(url: str) -> None:
    store = store_from_url(url)
    try:
        await store.create(make_request("aaaa1111" + "0" * 24, run_id="run-1", approvers=()))
        await store.create(make_request("bbbb2222" + "0" * 24, run_id="run-2", approvers=()))
        await store.create(
            make_request("cccc3333" + "0" * 24, kind="question", message="Which vendor?", approvers=())
        )
        await store.create(make_request("dddd4444" + "0" * 24, approvers=("cfo",)))
    finally:
        await store.aclose()


async def test_pending_approve_deny_answer_cancel_audit(store_url: str) -> None:
    await seed(store_url)
    code, out, _ = await run_cli("pending", "--store", store_url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "KIND", "RUN", "CALL", "EXPIRES", "IN"]
    assert [row.split()[0] for row in rows] == ["aaaa1111", "bbbb2222", "cccc3333", "dddd4444"]
    assert "transfer(amount=5)" in rows[0] and "question: Which vendor?" in rows[2]

    code, out, _ = await run_cli(
        "pending", "--run-id", "run-2", "--json", env={"HUMANLAYER_STORE": store_url}
    )
    assert code == 0 and [r["id"][:8] for r in json.loads(out)] == ["bbbb2222"]

    code, out, _ = await run_cli("approve", "aaaa", "--comment", "fine", "--store", store_url)
    assert code == 0 and f"approved by {getpass.getuser()} via cli" in out  # --by: the OS user
    code, out, _ = await run_cli(
        "deny", "bbbb2222", "--by", "ann", "--reason", "wrong IBAN", "--store", store_url
    )
    assert code == 0 and "denied by ann" in out and "(wrong IBAN)" in out
    code, out, _ = await run_cli("answer", "cccc", "ACME Corp", "--by", "ann", "--json", "--store", store_url)
    assert code == 0 and json.loads(out)["answer"] == "ACME Corp"
    code, _, err = await run_cli("cancel", "dddd", "--by", "mallory", "--store", store_url)
    assert code == 1 and "not an approver" in err
    code, out, _ = await run_cli("cancel", "dddd", "--by", "cfo", "--reason", "dup", "--store", store_url)
    assert code == 0 and "cancelled by cfo" in out
    code, _, err = await run_cli("approve", "bbbb2222" + "0" * 24, "--by", "ann", "--store", store_url)
    assert code == 1 and "already denied by ann" in err

    store = store_from_url(store_url)
    try:
        assert await store.list_pending() == []
        question = await store.get("cccc3333" + "0" * 24)
        assert question.decision is not None and question.decision.answer == "ACME Corp"
        assert (await store.get("dddd4444" + "0" * 24)).status is Status.CANCELLED
    finally:
        await store.aclose()

    code, out, _ = await run_cli("audit", "--json", "--since", "1h", "--store", store_url)
    entries = json.loads(out)
    assert code == 0 and [e["event"] for e in entries] == [
        *["approval.requested"] * 4,  # written by the store with each seeded request
        "approval.decided",
        "approval.decided",
        "approval.decided",
        "approval.cancelled",
    ]
    assert entries[5]["fields"] == {"status": "denied", "by": "ann", "via": "cli", "comment": "wrong IBAN"}
    code, out, _ = await run_cli("audit", "--request", "bbbb2222" + "0" * 24, "--store", store_url)
    assert code == 0 and "decided" in out and "wrong IBAN" in out and "aaaa1111" not in out
    code, out, _ = await run_cli("audit", "--since", "2999-01-01T00:00:00", "--json", "--store", store_url)
    assert code == 0 and json.loads(out) == []

    code, out, _ = await run_cli("prune", "--older-than", "0s", "--store", store_url)
    assert code == 0 and out.strip() == "pruned 4 decided requests"


async def test_usage_errors_exit_2_and_unknown_ids_exit_1(tmp_path: Path) -> None:
    code, _, err = await run_cli("pending")
    assert code == 2 and "HUMANLAYER_STORE" in err
    code, _, err = await run_cli("pending", "--store", "redis://cache")
    assert code == 2 and "unsupported store URL" in err
    url = f"sqlite:///{tmp_path / 'a.db'}"
    await seed(url)
    code, _, err = await run_cli("approve", "nope", "--store", url)
    assert code == 1 and "no approval request with id 'nope'" in err
    code, _, err = await run_cli("audit", "--since", "yesterday", "--store", url)
    assert code == 2 and "neither a duration" in err


# -- issue 12: what the terminal shows is the real call, and only the named request ------------

FORGED = "\x1b[2J\x1b[H\rtransfer_money(amount=25, recipient='ACME')\n\u202eevil\u202c"
FORGED_SHOWN = "\\x1b[2J\\x1b[H\\rtransfer_money(amount=25, recipient='ACME')\\n\\u202eevil\\u202c"
RAW = ("\x1b", "\r", "\u202e", "\u202c")


async def test_tables_and_messages_spell_out_control_and_bidi_characters(store_url: str) -> None:
    store = store_from_url(store_url)
    try:
        await store.create(
            make_request(
                "eeee5555" + "0" * 24,
                function="transfer_money\x1b[1A",
                run_id=f"run{FORGED}",
                kwargs={"amount": 250_000, "recipient": f"Mallory{FORGED}"},
                context={"note": FORGED},
                approvers=(),
            )
        )
        await store.create(make_request("dddd4444" + "0" * 24, approvers=("cfo",)))
    finally:
        await store.aclose()
    code, out, _ = await run_cli("pending", "--store", store_url)
    assert code == 0 and not [raw for raw in RAW if raw in out]
    assert "transfer_money\\x1b[1A(amount=250000" in out and f"run{FORGED_SHOWN}" in out
    assert not [line for line in out.splitlines() if line.startswith("transfer_money(amount=25")]
    code, out, _ = await run_cli("pending", "--json", "--store", store_url)
    assert code == 0 and json.loads(out)[0]["context"] == {"note": FORGED}  # JSON stays JSON

    code, out, _ = await run_cli("show", "eeee", "--store", store_url)
    assert code == 0 and not [raw for raw in RAW if raw in out]
    assert "amount = 250000" in out and "transfer_money\\x1b[1A  (request eeee5555" in out
    assert "note = " in out and "Status: pending" in out

    code, out, _ = await run_cli(
        "deny", "eeee", "--by", f"ann{FORGED}", "--reason", FORGED, "--store", store_url
    )
    assert code == 0 and not [raw for raw in RAW if raw in out]
    assert f"denied by ann{FORGED_SHOWN} via cli" in out
    code, out, err = await run_cli("approve", "eeee5555" + "0" * 24, "--by", "bob", "--store", store_url)
    assert (
        code == 1 and not [raw for raw in RAW if raw in err] and f"already denied by ann{FORGED_SHOWN}" in err
    )
    code, _, err = await run_cli("approve", f"{FORGED}eeee", "--store", store_url)
    assert code == 1 and not [raw for raw in RAW if raw in err]
    # a log line too (structlog quotes a value with spaces, but prints this one as it is)
    code, _, err = await run_cli("approve", "dddd", "--by", "x\x1b[2J\u202ey", "--store", store_url)
    assert code == 1 and "by=x\\x1b[2J\\u202ey" in err and not [raw for raw in RAW if raw in err]
    code, out, _ = await run_cli("audit", "--store", store_url)
    assert code == 0 and not [raw for raw in RAW if raw in out]
    assert "transfer_money\\x1b[1A" in out and "comment=\\x1b[2J\\x1b[H\\rtransfer_money(amount=25, re" in out


async def test_show_prints_the_whole_call_that_pending_shortens(store_url: str) -> None:
    store = store_from_url(store_url)
    rows = [f"row-{n}" for n in range(1, 12)]
    query = "SELECT 1;" + " " * 1000 + "DROP TABLE users"
    try:
        await store.create(
            make_request(
                "ffff6666" + "0" * 24,
                function="run_sql",
                kwargs={"rows": rows, "options": {"a": {"b": {"c": {"d": "fourth-level"}}}}, "query": query},
                approvers=(),
            )
        )
    finally:
        await store.aclose()
    code, out, err = await run_cli("pending", "--store", store_url)
    assert code == 0 and "more characters" in out and "DROP TABLE" not in out
    assert "humanlayer-async show ID" in err
    code, out, _ = await run_cli("show", "ffff6666", "--store", store_url)
    assert code == 0 and '"row-11"' in out and '"d": "fourth-level"' in out and " DROP TABLE users" in out
    code, out, _ = await run_cli("show", "ffff", "--json", "--store", store_url)
    assert code == 0 and json.loads(out)["kwargs"]["query"] == query
    code, _, err = await run_cli("show", "0123", "--store", store_url)
    assert code == 1 and "no approval request with id '0123'" in err


async def test_an_id_prefix_needs_four_characters(store_url: str) -> None:
    await seed(store_url)
    code, _, err = await run_cli("approve", "a", "--by", "ann", "--store", store_url)
    assert code == 1 and "at least 4 characters" in err
    code, _, err = await run_cli("show", "aaa", "--store", store_url)
    assert code == 1 and "at least 4 characters" in err
    store = store_from_url(store_url)
    try:
        assert len(await store.list_pending()) == 4
    finally:
        await store.aclose()


async def test_serve_runs_an_apps_listener_alone_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "fleet_app.py").write_text(
        "from humanlayer_async import HumanLayer\n"
        "from humanlayer_async.stores import SQLiteStore\n"
        f"hl = HumanLayer([], store=SQLiteStore({str(tmp_path / 'a.db')!r}), listen='127.0.0.1:0')\n"
    )
    process = await anyio.open_process([*cli_command(), "serve", "fleet_app:hl"], cwd=tmp_path)
    try:
        assert process.stdout is not None
        with anyio.fail_after(20):
            line = b""
            while b"\n" not in line:
                line += await process.stdout.receive()
        url = line.decode().split(" on ")[1].split()[0]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/healthz")
        assert (response.status_code, response.text) == (200, "ok")
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()

    code, _, err = await run_cli("serve", "fleet_app:nothing", cwd=tmp_path)
    assert code == 2 and "has no attribute 'nothing'" in err
    code, _, err = await run_cli("serve", "json:dumps")
    assert code == 2 and "not a HumanLayer" in err


async def test_console_link_prints_a_single_use_sign_in_link_for_a_running_console() -> None:
    operator, alice = "operator-key-0123456789", "alice-key-0123456789"
    web = WebChannel(token=operator, users={"alice": alice})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:
        assert hl.url is not None
        signed_in_as = []
        for key, user in ((operator, []), (alice, ["--user", "alice"])):
            code, out, _ = await run_cli("console-link", "--url", hl.url, *user, env={TOKEN_ENV: key})
            link = out.strip()
            assert code == 0 and link.startswith(f"{hl.url}/approvals?code=") and key not in link
            client.cookies.clear()
            assert (await client.get(link)).status_code == 303
            page = await client.get(f"{hl.url}/approvals")
            signed_in_as.append(re.search(r"Signed in as <strong>(.*?)</strong>", page.text))
            client.cookies.clear()
            assert (await client.get(link)).status_code == 401  # used
        assert [match and match.group(1) for match in signed_in_as] == ["web-console", "alice"]
        code, out, _ = await run_cli(
            "console-link", "--url", hl.url, env={TOKEN_ENV: "not-the-key-0123456789"}
        )
        assert code == 0 and (await client.get(out.strip())).status_code == 401  # signed with a wrong key
    code, _, err = await run_cli("console-link", env={TOKEN_ENV: ""})
    assert code == 2 and f"set ${TOKEN_ENV}" in err


# -- issue 13: commands open a store, never create one; a closed pipe ends them quietly ---------


async def test_commands_never_create_a_sqlite_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "approvals.db"
    for command in (["pending"], ["show", "aaaa"], ["approve", "aaaa"], ["audit"], ["prune"]):
        code, out, err = await run_cli(*command, "--store", f"sqlite:///{typo}")
        assert (code, out) == (2, ""), command
        assert f"humanlayer-async {command[0]}: no store at {typo}" in err, command
    assert not typo.parent.exists()


@pytest.mark.postgres
async def test_commands_never_create_a_postgres_schema(pg_dsn: str, pg_schema: str) -> None:
    url = f"{pg_dsn}?schema={pg_schema}"
    for command in (["pending"], ["approve", "aaaa"], ["audit"]):
        code, out, err = await run_cli(*command, "--store", url)
        assert (code, out) == (2, ""), command
        assert f"no store at {url}" in err, command
    assert not await pg_schema_exists(pg_dsn, pg_schema)


async def test_audit_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    await seed(url)
    for command in (["audit"], ["audit", "--json"], ["pending"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # as `| head -1` does once it has its line: nobody reads any more
        try:
            result = await anyio.run_process(
                [*cli_command(), *command, "--store", url], stdout=write_end, check=False
            )
        finally:
            os.close(write_end)
        err = result.stderr.decode()
        assert result.returncode == 128 + signal.SIGPIPE, (command, err)  # as if SIGPIPE ended it
        assert "Error" not in err and "Traceback" not in err, command


async def test_approve_all_lists_confirms_and_decides_exactly_the_listed_requests(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hl.db'}"
    store = store_from_url(url)
    try:
        for n in range(3):
            await store.create(
                make_request(f"eeee000{n}" + "0" * 24, function="refund", run_id="r1", approvers=())
            )
        await store.create(make_request("ffff0000" + "0" * 24, function="refund", run_id="r2", approvers=()))
        await store.create(
            make_request("aaaa0000" + "0" * 24, function="transfer", run_id="r1", approvers=())
        )
    finally:
        await store.aclose()

    code, out, err = await run_cli("approve", "--function", "refund", "--store", url)
    assert code == 1 and "--all with --function" in err
    code, out, _ = await run_cli(
        "approve", "--all", "--function", "refund", "--run-id", "r1", "--store", url, stdin="n\n"
    )
    assert code == 0 and out.count("refund(") == 3 and "approve these 3 requests? [y/N]" in out
    assert "nothing decided" in out
    code, out, _ = await run_cli(
        "approve",
        "--all",
        "--function",
        "refund",
        "--run-id",
        "r1",
        "--by",
        "ann",
        "--store",
        url,
        stdin="y\n",
    )
    assert code == 0 and out.count("approved by ann via cli") == 3
    code, out, _ = await run_cli(
        "deny", "--all", "--function", "refund", "--reason", "dup", "--yes", "--by", "ann", "--store", url
    )
    assert code == 0 and "? [y/N]" not in out and out.count("denied by ann via cli") == 1

    store = store_from_url(url)
    try:
        statuses = {
            r.id[:8]: r.status
            for r in [await store.get(k + "0" * 24) for k in ("eeee0000", "ffff0000", "aaaa0000")]
        }
        assert statuses == {
            "eeee0000": Status.APPROVED,
            "ffff0000": Status.DENIED,
            "aaaa0000": Status.PENDING,
        }
        decided = [e for e in await store.history() if e.event == "approval.decided"]
        assert len(decided) == 4  # one audited decision each
    finally:
        await store.aclose()
    code, out, _ = await run_cli("approve", "--all", "--function", "refund", "--yes", "--store", url)
    assert code == 0 and "nothing of refund is pending" in out


async def test_approve_all_never_decides_a_request_that_arrived_after_the_list(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hl.db'}"
    store = store_from_url(url)
    try:
        await store.create(make_request("eeee0000" + "0" * 24, function="refund", approvers=()))
        process = await anyio.open_process(
            [*cli_command(), "approve", "--all", "--function", "refund", "--by", "ann", "--store", url],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdin is not None and process.stdout is not None
        shown = b""
        with anyio.fail_after(15):
            while b"[y/N]" not in shown:
                shown += await process.stdout.receive()
        await store.create(
            make_request("eeee1111" + "0" * 24, function="refund", approvers=())
        )  # while it asks
        await process.stdin.send(b"y\n")
        with anyio.fail_after(15):
            assert await process.wait() == 0
        assert (await store.get("eeee0000" + "0" * 24)).status is Status.APPROVED
        assert (await store.get("eeee1111" + "0" * 24)).status is Status.PENDING
    finally:
        await store.aclose()
