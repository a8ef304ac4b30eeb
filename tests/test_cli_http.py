"""``humanlayer-async`` over the HTTP API (``--url``), run as an operator runs it, against a
``HumanLayer`` in this process serving ``ApiChannel`` on a loopback port: the same tables,
decisions and exit statuses as with ``--store``, decided as the token's user."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from humanlayer_async import HumanLayer, Status
from humanlayer_async.channels.api import ApiChannel
from humanlayer_async.stores import store_from_url

from .conftest import make_request, serving
from .durable_helpers import run_cli

pytestmark = pytest.mark.anyio

TOKENS = {
    "ann": "ann-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
    "cfo": "cfo-token-0123456789abcdef",
}
HOSTILE = "ok\x1b[2J\u202eevil"
HOUR = timedelta(hours=1)


def rid(prefix: str) -> str:
    """A full request id starting with ``prefix``."""
    return prefix + "0" * (32 - len(prefix))


@contextlib.asynccontextmanager
async def api_at(store_url: str) -> AsyncIterator[str]:
    """A ``HumanLayer`` on ``store_url`` serving the API on a loopback port; its URL."""
    async with HumanLayer([ApiChannel(tokens=TOKENS)], store=store_url, listen="127.0.0.1:0") as hl:
        assert hl.url is not None
        yield hl.url


async def as_user(user: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """``humanlayer-async ARGS`` with ``user``'s token in ``$HUMANLAYER_TOKEN``; no traceback."""
    code, out, err = await run_cli(*args, env={"HUMANLAYER_TOKEN": TOKENS[user]}, stdin=stdin)
    assert "Traceback" not in err
    return code, out, err


async def seed(url: str, *requests: tuple[str, dict[str, Any]]) -> None:
    """Store requests (``make_request``'s, with these fields) whose ids start with each prefix."""
    store = store_from_url(url)
    try:
        for request_id, fields in requests:
            await store.create(make_request(rid(request_id), **fields))
    finally:
        await store.aclose()


async def test_listings_print_as_with_the_store(store_url: str) -> None:
    await seed(
        store_url,
        ("aaaa1111", {"run_id": "run-1", "approvers": ("ann",), "context": {"note": HOSTILE}}),
        (
            "bbbb2222",
            {"run_id": "run-2", "approvers": (), "kwargs": {"to": [f"user{i}@x.com" for i in range(40)]}},
        ),
        ("cccc3333", {"kind": "question", "message": "Which vendor?", "approvers": ()}),
    )
    async with api_at(store_url) as url:
        for command in (
            ("pending",),
            ("pending", "--json"),
            ("pending", "--run-id", "run-2"),
            ("pending", "--kind", "question", "--json"),
            ("show", "aaaa"),
            ("show", "bbbb2222", "--json"),
            ("audit", "--since", "1h"),
            ("audit", "--request", rid("aaaa1111"), "--json"),
            ("stats",),
            ("stats", "--json"),
        ):
            via_store = await as_user("ann", *command, "--store", store_url)
            via_api = await as_user("ann", *command, "--url", url)
            assert via_api == via_store and via_store[0] == 0, command
        code, out, err = await as_user("ann", "pending", "--url", url)
        [header, *rows] = out.splitlines()
        assert header.split() == ["ID", "KIND", "RUN", "CALL", "EXPIRES", "IN"] and err.startswith("… marks")
        assert [row.split()[0] for row in rows] == ["aaaa1111", "bbbb2222", "cccc3333"]
        assert "more characters)" in rows[1] and "\x1b" not in out + err
        code, out, _ = await as_user("ann", "show", "aaaa", "--url", url)
        assert code == 0 and '"ok\\u001b[2J\\u202eevil"' in out and "Status: pending" in out


async def test_decisions_are_made_as_the_tokens_user(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'approvals.db'}"
    editable = {"amount": {"type": "integer"}}
    await seed(
        store_url,
        ("aaaa1111", {"approvers": ("ann",), "editable": editable}),
        ("bbbb2222", {"approvers": ("ann", "bob")}),
        ("cccc3333", {"kind": "question", "message": "Which vendor?", "approvers": ()}),
        ("dddd4444", {"approvers": ("cfo",)}),
        ("eeee5555", {"approvers": ("ann", "bob"), "approvals": 2}),
        ("ffff6666", {"approvers": ("ann",), "function": "refund", "run_id": "r"}),
        ("ffff7777", {"approvers": ("ann",), "function": "refund", "run_id": "r"}),
    )
    async with api_at(store_url) as url:
        code, out, err = await as_user("ann", "approve", "aaaa", "--set", "amount=oops", "--url", url)
        assert code == 1 and out == "" and "cannot edit request" in err and "nothing was decided" in err
        code, out, _ = await as_user(
            "ann", "approve", "aaaa", "--set", "amount=7", "--comment", "fine", "--url", url
        )
        assert code == 0 and f"{rid('aaaa1111')}: approved by ann with amount=7 via api at " in out
        assert out.endswith("UTC (fine)\n")

        code, out, _ = await as_user("bob", "deny", "bbbb2222", "--reason", "wrong IBAN", "--url", url)
        assert code == 0 and "denied by bob via api" in out and "(wrong IBAN)" in out
        code, out, err = await as_user("ann", "approve", rid("bbbb2222"), "--url", url)  # bob was first
        assert code == 1 and "denied by bob" in out
        already = f"humanlayer-async approve: request {rid('bbbb2222')} was already denied by bob"
        assert err.startswith(already)

        code, out, _ = await as_user("cfo", "answer", "cccc", "ACME Corp", "--json", "--url", url)
        assert code == 0 and json.loads(out)["answer"] == "ACME Corp" and json.loads(out)["by"] == "cfo"

        code, _, err = await as_user("ann", "cancel", "dddd", "--url", url)
        assert code == 1 and err.startswith("humanlayer-async cancel: ann is not an approver")
        code, out, _ = await as_user("cfo", "cancel", "dddd", "--reason", "dup", "--url", url)
        assert code == 0 and "cancelled by cfo via api" in out and "(dup)" in out

        code, out, _ = await as_user("ann", "approve", "eeee", "--url", url)  # one vote of two
        assert code == 0 and out.startswith("counted: 1 of 2 approvals")
        code, out, _ = await as_user("bob", "approve", "eeee", "--json", "--url", url)
        decided = json.loads(out)
        assert code == 0 and decided["status"] == "approved"
        assert [vote["by"] for vote in decided["votes"]] == ["ann", "bob"]

        code, out, _ = await as_user(
            "ann", "approve", "--all", "--function", "refund", "--url", url, stdin="n\n"
        )
        assert code == 0 and out.endswith("approve these 2 requests? [y/N] nothing decided\n")
        code, out, _ = await as_user("ann", "approve", "--all", "--function", "refund", "--yes", "--url", url)
        assert code == 0 and out.count(": approved by ann via api at ") == 2

        code, out, _ = await as_user("ann", "audit", "--request", rid("aaaa1111"), "--json", "--url", url)
        events = [entry["event"] for entry in json.loads(out)]
        assert code == 0 and events == ["approval.requested", "approval.decided"]

    store = store_from_url(store_url)
    try:
        assert await store.list_pending() == []
        approved = (await store.get(rid("aaaa1111"))).decision
        assert approved is not None and approved.edits == {"amount": 7} and approved.by == "ann"
        assert (await store.get(rid("dddd4444"))).status is Status.CANCELLED
    finally:
        await store.aclose()


async def test_grants_listed_confirmed_and_revoked(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'approvals.db'}"
    hl = HumanLayer([ApiChannel(tokens=TOKENS)], store=store_url, listen="127.0.0.1:0")

    @hl.require_approval(approvers=["ann", "bob"], approvals=2)
    async def pay(amount: int) -> str:
        return f"paid {amount}"

    async with hl:
        assert hl.url is not None
        url = hl.url
        grant = await hl.grant(pay, by="ann", expires_in=HOUR, where={"amount": 5})
        for command in (("grants",), ("grants", "--json")):
            via_store = await as_user("bob", *command, "--store", store_url)
            assert await as_user("bob", *command, "--url", url) == via_store and via_store[0] == 0
        code, out, _ = await as_user("bob", "grants", "--url", url)
        assert code == 0 and "waiting for 1 more approver" in out and grant.id in out

        code, _, err = await as_user("cfo", "grants", "confirm", grant.id, "--url", url)
        assert code == 1 and err.startswith("humanlayer-async grants confirm: cfo is not an approver")
        code, out, _ = await as_user("bob", "grants", "confirm", grant.id, "--url", url)
        confirmed = f"confirmed grant {grant.id} of tool {grant.function} given by ann, bob: active until "
        assert code == 0 and out.startswith(confirmed)
        assert await pay(5) == "paid 5"  # covered now: nobody is asked

        code, out, _ = await as_user("ann", "grants", "--url", url, "revoke", grant.id)
        assert code == 0 and out.startswith(f"revoked grant {grant.id} of tool {grant.function} by ann at ")
        assert await hl.grants() == []
        code, _, err = await as_user("bob", "grants", "revoke", grant.id, "--json", "--url", url)
        revoked = f"grant {grant.id} of tool {grant.function} was already revoked by ann at "
        assert code == 1 and revoked in err
        code, _, err = await as_user("bob", "grants", "confirm", grant.id, "--url", url)
        assert code == 1 and "it cannot be confirmed" in err
        code, _, err = await as_user("bob", "grants", "revoke", "f" * 32, "--url", url)
        assert code == 1 and err == f"humanlayer-async grants revoke: no grant with id {'f' * 32!r}\n"


async def test_refused_before_anything_is_sent(tmp_path: Path) -> None:
    url = "https://approvals.internal"
    code, out, err = await as_user("ann", "approve", "aaaa", "--token", TOKENS["bob"], "--url", url)
    assert code == 2 and out == "" and "shown by ps" in err and TOKENS["bob"] not in err
    code, _, err = await as_user("ann", "pending", f"--token={TOKENS['bob']}", "--url", url)
    assert code == 2 and "shown by ps" in err and TOKENS["bob"] not in err
    store_only = "this command needs the store itself: use --store, not --url"
    for name, args, message in (
        (
            "approve",
            ("approve", "aaaa", "--by", "bob"),
            "--by does not go with --url: you decide as the user your token names",
        ),
        (
            "pending",
            ("pending", "--store", f"sqlite:///{tmp_path / 'x.db'}"),
            "--url or --store: give one of them",
        ),
        ("prune", ("prune",), store_only),
        ("audit verify", ("audit", "verify"), store_only),
        ("audit export", ("audit", "export"), store_only),
    ):
        code, out, err = await as_user("ann", *args, "--url", url)
        assert (code, out, err) == (2, "", f"humanlayer-async {name}: {message}\n")
    code, _, err = await as_user("ann", "pending", "--url", "http://approvals.internal")
    assert code == 2 and "plain HTTP would carry your token across the network" in err
    code, _, err = await as_user("ann", "pending", "--url", "https://ann:pw@approvals.internal")
    assert code == 2 and "without credentials" in err and "pw" not in err
    code, _, err = await run_cli("pending", "--url", url)  # no token
    assert code == 2 and err.endswith(
        ": --url needs your API token: set $HUMANLAYER_TOKEN, or pass --token-file PATH\n"
    )


async def test_token_file_bad_token_and_unreachable_servers(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'approvals.db'}"
    await seed(store_url, ("aaaa1111", {"approvers": ("bob",)}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["bob"] + "\n")
    async with api_at(store_url) as url:
        token_file.chmod(0o644)
        code, out, err = await run_cli("pending", "--token-file", str(token_file), "--url", url)
        open_to_others = (
            f"the token file {token_file} is open to other users (mode 644): chmod 600 {token_file}"
        )
        assert (code, out, err) == (2, "", f"humanlayer-async pending: {open_to_others}\n")
        token_file.chmod(0o600)
        approve = ("approve", "aaaa", "--token-file", str(token_file), "--url", url)
        code, out, _ = await run_cli(*approve, env={"HUMANLAYER_TOKEN": TOKENS["ann"]})
        assert code == 0 and "approved by bob via api" in out  # the file's token, not the variable's

        beside = {"HUMANLAYER_TOKEN": TOKENS["ann"], "HUMANLAYER_STORE": f"sqlite:///{tmp_path / 'none.db'}"}
        code, out, _ = await run_cli("pending", "--url", url, env=beside)  # --url over the variable
        assert (code, out) == (0, "nothing is pending\n")

        code, out, err = await run_cli("pending", "--url", url, env={"HUMANLAYER_TOKEN": "x" * 24})
        refused = f"humanlayer-async pending: {url} does not accept the token in $HUMANLAYER_TOKEN\n"
        assert (code, out, err) == (2, "", refused)
        code, _, err = await as_user("ann", "pending", "--url", f"{url}/elsewhere")
        assert code == 2 and "not as the HumanLayer API does" in err
        tls = url.replace("http://", "https://")  # a TLS handshake with a plain HTTP server
        code, _, err = await as_user("ann", "pending", "--url", tls)
        assert code == 2 and err.startswith(f"humanlayer-async pending: TLS with {tls} failed: ")

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = await as_user("ann", "pending", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"humanlayer-async pending: cannot reach http://127.0.0.1:{port}: ")


async def test_an_answer_that_is_not_the_apis_is_one_line() -> None:
    async def unlike_the_api(request: Request) -> JSONResponse:
        return JSONResponse({"requests": [{"id": 1}]})

    async with serving([Route("/api/v1/requests", unlike_the_api)]) as client:
        code, out, err = await as_user("ann", "pending", "--url", str(client.base_url))
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert "answered JSON the HumanLayer API does not give (KeyError: 'kwargs')" in err
