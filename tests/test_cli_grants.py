"""``humanlayer-async grants`` (list, revoke, confirm), run as an operator runs it, on grants
given through a ``HumanLayer`` on the same store."""

from __future__ import annotations

import getpass
import json
import re
from datetime import timedelta

import anyio
import pytest

from humanlayer_async import HumanLayer
from humanlayer_async.testing import wait_for_pending

from .durable_helpers import run_cli

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
HOSTILE = "ok\x1b[2J\x1b[H\u202eevil"
HOSTILE_SHOWN = "note='ok\\x1b[2J\\x1b[H\\u202eevil'"
RAW = ("\x1b", "\u202e")
HEADER = ["ID", "TOOL", "WHERE", "BY", "EXPIRES AT (UTC)", "USES", "STATE"]


def table_rows(out: str) -> list[list[str]]:
    """The cells of each line of a table (columns are two or more spaces apart)."""
    return [re.split(r" {2,}", line) for line in out.splitlines()]


async def test_grants_lists_escaped_and_revoke_makes_calls_ask_again(store_url: str) -> None:
    hl = HumanLayer([], store=store_url, listen=None)

    @hl.require_approval(approvers=["ann", "bob"])
    async def pay(amount: int, note: str) -> str:
        return f"paid {amount}"

    async with hl:
        grant = await hl.grant(pay, by="ann", expires_in=HOUR, where={"note": HOSTILE}, max_uses=3)
        assert await pay(5, HOSTILE) == "paid 5"  # covered: nobody is asked
        [stored] = await hl.grants()

        code, out, err = await run_cli("grants", "--store", store_url)
        assert code == 0 and not [raw for raw in RAW if raw in out + err]
        assert table_rows(out) == [
            HEADER,
            [
                grant.id,
                grant.function,
                HOSTILE_SHOWN,
                "ann",
                f"{stored.expires_at:%Y-%m-%d %H:%M:%S}",
                "1/3",
                "active",
            ],
        ]
        code, out, _ = await run_cli("grants", "--json", "--store", store_url)
        [listed] = json.loads(out)
        assert code == 0 and listed["where"] == {"note": HOSTILE} and listed["state"] == "active"

        code, out, err = await run_cli("grants", "revoke", grant.id, "--by", "bob", "--store", store_url)
        assert code == 0 and err == ""
        assert out.startswith(f"revoked grant {grant.id} of tool {grant.function} by bob at ")
        assert await hl.grants() == []
        [revoked] = await hl.grants(active=False)
        assert revoked.revoked_by == "bob" and revoked.uses == 1

        async with anyio.create_task_group() as task_group:  # the same call waits for a human again
            task_group.start_soon(pay, 5, HOSTILE)
            [request] = await wait_for_pending(hl)
            assert request.kwargs == {"amount": 5, "note": HOSTILE}
            task_group.cancel_scope.cancel()

        code, out, _ = await run_cli("grants", "--store", store_url)
        assert code == 0 and out == "no live grants (--all lists the ended ones too)\n"
        code, out, _ = await run_cli("grants", "--all", "--store", store_url)
        [_, row] = table_rows(out)
        assert code == 0 and row[0] == grant.id and row[2] == HOSTILE_SHOWN and row[5] == "1/3"
        assert row[6].startswith("revoked by bob at ") and row[6].endswith(" UTC")

        # Revoked already, by someone else: refused, saying by whom.
        code, out, err = await run_cli("grants", "revoke", grant.id, "--by", "ann", "--store", store_url)
        assert code == 1 and out == "" and "Traceback" not in err
        assert f"grant {grant.id} of tool {grant.function} was already revoked by bob at " in err
        assert (await hl.grants(active=False))[0].revoked_by == "bob"


async def test_confirm_gives_a_grant_its_second_approver_and_refusals_exit_1(store_url: str) -> None:
    hl = HumanLayer([], store=store_url, listen=None)

    @hl.require_approval(approvers=["ann", "bob", "carol"], approvals=2)
    async def deploy(service: str) -> str:
        return f"deployed {service}"

    async with hl:
        grant = await hl.grant(deploy, by="ann", expires_in=HOUR)
        code, out, _ = await run_cli("grants", "--store", store_url)
        [_, row] = table_rows(out)
        assert code == 0 and row[0] == grant.id
        assert row[2:4] == ["any call", "ann"] and row[5:] == ["0/-", "waiting for 1 more approver"]

        # The one who proposed it counts once.
        code, out, _ = await run_cli("grants", "confirm", grant.id, "--by", "ann", "--store", store_url)
        assert code == 0
        given = f"grant {grant.id} of tool {grant.function} given by ann"
        assert out == f"counted: {given}; waiting for 1 more approver\n"
        code, out, err = await run_cli("grants", "confirm", grant.id, "--by", "mallory", "--store", store_url)
        assert code == 1 and out == "" and "Traceback" not in err
        assert f"humanlayer-async grants confirm: 'mallory' is not an approver for grant '{grant.id}'" in err
        code, _, err = await run_cli("grants", "confirm", "0" * 32, "--by", "bob", "--store", store_url)
        assert code == 1 and f"no grant with id '{'0' * 32}'" in err and "Traceback" not in err
        [waiting] = await hl.grants()
        assert waiting.by == ("ann",) and not waiting.confirmed

        # --store before the subcommand counts as after it.
        code, out, _ = await run_cli("grants", "--store", store_url, "confirm", grant.id, "--by", "bob")
        [confirmed] = await hl.grants()
        assert code == 0 and confirmed.by == ("ann", "bob") and confirmed.confirmed
        assert out.startswith(
            f"confirmed grant {grant.id} of tool {grant.function} given by ann, bob: active until "
        )
        assert await deploy("api") == "deployed api"  # covered now
        code, out, _ = await run_cli("grants", "--store", store_url)
        [_, row] = table_rows(out)
        assert code == 0 and row[3:4] == ["ann, bob"] and row[5:] == ["1/-", "active"]

        code, _, err = await run_cli("grants", "revoke", grant.id, "--by", "mallory", "--store", store_url)
        assert code == 1 and "'mallory' is not an approver for grant" in err and "Traceback" not in err
        code, _, err = await run_cli("grants", "revoke", "f" * 32, "--by", "bob", "--store", store_url)
        assert code == 1 and "no grant with id" in err and "Traceback" not in err
        assert [g.id for g in await hl.grants()] == [grant.id]

        code, out, _ = await run_cli(
            "grants", "revoke", grant.id, "--by", "carol", "--json", env={"HUMANLAYER_STORE": store_url}
        )
        shown = json.loads(out)
        assert code == 0 and shown["id"] == grant.id and shown["state"] == "revoked"
        assert shown["revoked_by"] == "carol" and shown["by"] == ["ann", "bob"]
        code, out, err = await run_cli("grants", "confirm", grant.id, "--by", "bob", "--store", store_url)
        assert code == 1 and out == "" and "Traceback" not in err
        assert "expired, used up or revoked: it cannot be confirmed" in err
        assert await hl.grants() == []


async def test_all_adds_the_ended_grants_with_their_state(store_url: str) -> None:
    hl = HumanLayer([], store=store_url, listen=None)
    operator = getpass.getuser()  # revoke's --by defaults to the OS user, as approve's does

    @hl.require_approval(approvers=["ann", operator])
    async def refund(amount: int) -> int:
        return amount

    async with hl:
        code, out, _ = await run_cli("grants", "--store", store_url)
        assert code == 0 and out == "no live grants (--all lists the ended ones too)\n"
        code, out, _ = await run_cli("grants", "--all", "--store", store_url)
        assert code == 0 and out == "no grants\n"

        used = await hl.grant(refund, by="ann", expires_in=HOUR, where={"amount": 1}, max_uses=1)
        assert await refund(1) == 1  # its one use
        expired = await hl.grant(refund, by="ann", expires_in=timedelta(milliseconds=1), where={"amount": 2})
        live = await hl.grant(refund, by="ann", expires_in=HOUR, where={"amount": 3})
        revoked = await hl.grant(refund, by="ann", expires_in=HOUR, where={"amount": 4})
        code, out, _ = await run_cli("grants", "revoke", revoked.id, "--store", store_url)
        assert code == 0 and f"by {operator} at " in out

        code, out, _ = await run_cli("grants", "--store", store_url)
        assert code == 0 and [row[0] for row in table_rows(out)] == ["ID", live.id]
        code, out, _ = await run_cli("grants", "--all", "--store", store_url)
        header, *rows = table_rows(out)
        states = {row[0]: (row[2], row[5], row[6]) for row in rows}
        assert code == 0 and header == HEADER and len(rows) == 4
        assert states[used.id] == ("amount=1", "1/1", "used up")
        assert states[expired.id] == ("amount=2", "0/-", "expired")
        assert states[live.id] == ("amount=3", "0/-", "active")
        assert states[revoked.id][:2] == ("amount=4", "0/-")
        assert states[revoked.id][2].startswith(f"revoked by {operator} at ")
        code, out, _ = await run_cli("grants", "--all", "--json", "--store", store_url)
        assert code == 0 and {g["id"]: g["state"] for g in json.loads(out)} == {
            used.id: "used up",
            expired.id: "expired",
            live.id: "active",
            revoked.id: "revoked",
        }


async def test_grants_help_and_usage_errors() -> None:
    code, out, _ = await run_cli("grants", "--help")
    assert code == 0 and "{revoke,confirm}" in out and "--all" in out
    assert "revoke" in out and "ask a human again" in out and "several approvers" in out
    code, out, _ = await run_cli("grants", "confirm", "--help")
    assert code == 0 and "--by BY" in out and "default: the OS user" in out
    code, _, err = await run_cli("grants", "revoke", "--by", "ann", "--store", "sqlite:///x.db")
    assert code == 2 and "the following arguments are required: id" in err
    code, _, err = await run_cli("grants", "revoke", "0" * 32, "--by", "ann")
    assert code == 2 and "HUMANLAYER_STORE" in err
