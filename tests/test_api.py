"""The HTTP API (``ApiChannel``): its routes over real loopback HTTP against the embedded
listener and through ``testing.api_client`` (no socket), checked against its own OpenAPI
document; tokens from code, a file and the environment; and hostile input on every route."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no type hints shipped
from structlog.testing import capture_logs

from humanlayer_async import ApprovalDenied, ConfigurationError, Decision, HumanLayer, StoreError
from humanlayer_async._codec import to_json
from humanlayer_async._stats import ToolStats, tool_stats
from humanlayer_async.channels.api import (
    ERRORS,
    OPERATIONS,
    PREFIX,
    TOKENS_ENV,
    ApiChannel,
    hash_token,
    openapi_document,
)
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import api_client, wait_for_pending

from .conftest import LateDecider, decision, make_request, serving

pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
CAROL = "carol-token-0123456789abcdef"
MALLORY = "mallory-token-0123456789abc"
TOKENS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "mallory": MALLORY}
ALICE_EMAIL = "alice@company.com"
APPROVERS = [ALICE_EMAIL, "bob", "carol"]
"""Alice by her email (her token's user has it), Bob and Carol by name; never Mallory."""

DOCUMENT = openapi_document()
API_MD_CODES = {
    "unauthenticated": 401,
    "unknown_request": 404,
    "unknown_grant": 404,
    "not_found": 404,
    "not_an_approver": 403,
    "already_decided": 409,
    "arguments_edited": 409,
    "invalid_edit": 400,
    "malformed": 400,
    "not_decidable": 400,
    "method_not_allowed": 405,
    "grant_not_live": 409,
    "unavailable": 503,
}
"""The error codes and statuses of the contract the CLI over HTTP is written against."""


# -- helpers ---------------------------------------------------------------------------------


def channel() -> ApiChannel:
    return ApiChannel(tokens=TOKENS, emails={"alice": ALICE_EMAIL})


def client(hl: HumanLayer, token: str | None) -> httpx.AsyncClient:
    """A client of ``hl``'s API: over loopback HTTP when it listens, else ``api_client``."""
    if hl.url is None:
        return api_client(hl, token)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=hl.url, headers=headers)


def _validate(body: Any, schema: dict[str, Any]) -> None:
    Draft202012Validator({**schema, "components": DOCUMENT["components"]}).validate(body)


def answer_schema(method: str, template: str, status: int) -> dict[str, Any]:
    responses = DOCUMENT["paths"][PREFIX + template][method.lower()]["responses"]
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def ok(response: httpx.Response, template: str) -> dict[str, Any]:
    """The body of a 200, once it is what the document says that route answers."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    _validate(body, answer_schema(response.request.method, template, 200))
    return body


def refused(response: httpx.Response, template: str, code: str) -> dict[str, Any]:
    """The ``error`` of a refusal with ``code``, once its status and body are what the
    document says that route refuses with."""
    assert response.status_code == API_MD_CODES[code], response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    _validate(body, answer_schema(response.request.method, template, response.status_code))
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


class Call:
    """A gated call running in a task group; ``ended()`` waits for how it ended."""

    def __init__(self, tg: TaskGroup, call: Callable[[], Awaitable[object]]) -> None:
        self.outcome: object = None
        self._done = anyio.Event()
        tg.start_soon(self._run, call)

    async def _run(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            self.outcome = await call()
        except ApprovalDenied as exc:
            self.outcome = exc
        finally:
            self._done.set()

    async def ended(self, within: float = 5.0) -> object:
        with anyio.fail_after(within):
            await self._done.wait()
        return self.outcome


@pytest.fixture(params=["http", "asgi"])
async def hl(request: pytest.FixtureRequest) -> AsyncIterator[HumanLayer]:
    """A running ``HumanLayer`` with the API: on the real listener, or mounted for ``api_client``."""
    listen = "127.0.0.1:0" if request.param == "http" else None
    async with HumanLayer([channel()], listen=listen) as running:
        yield running


def path(template: str, **ids: str) -> str:
    return PREFIX + template.format(**ids)


# -- reading ---------------------------------------------------------------------------------


async def test_list_and_get_with_filters(hl: HumanLayer) -> None:
    @hl.require_approval(approvers=APPROVERS)
    async def wire(amount: int) -> str:
        return f"wired {amount}"

    @hl.require_approval(approvers=APPROVERS)
    async def purge(table: str) -> str:
        return f"purged {table}"

    ask = hl.human_as_tool(approvers=APPROVERS)

    async def in_run() -> object:
        with hl.run("run-1"):
            return await wire(5000)

    async with anyio.create_task_group() as tg, client(hl, BOB) as api:
        Call(tg, in_run)
        await wait_for_pending(hl, 1)
        Call(tg, lambda: purge("users"))
        await wait_for_pending(hl, 2)
        Call(tg, lambda: ask("Which region?"))
        waiting = await wait_for_pending(hl, 3)

        listed = ok(await api.get(path("/requests")), "/requests")["requests"]
        assert [r["id"] for r in listed] == [r.id for r in waiting]  # oldest first
        assert [r["function"] for r in listed] == ["wire", "purge", "contact_human"]

        async def listed_functions(**query: str) -> list[str]:
            body = ok(await api.get(path("/requests"), params=query), "/requests")
            return [r["function"] for r in body["requests"]]

        assert await listed_functions(function="wire") == ["wire"]
        assert await listed_functions(function=waiting[1].tool or "") == ["purge"]  # by module.qualname too
        assert await listed_functions(run_id="run-1") == ["wire"]
        assert await listed_functions(kind="question") == ["contact_human"]
        assert await listed_functions(kind="approval", function="purge") == ["purge"]
        assert await listed_functions(function="", run_id="", kind="") == ["wire", "purge", "contact_human"]
        assert await listed_functions(function="nothing") == []
        for query in ({"kind": "maybe"}, {"colour": "red"}, {"function": "x" * 501}):
            error = refused(await api.get(path("/requests"), params=query), "/requests", "malformed")
            assert next(iter(query)) in error["message"]
        twice = await api.get(path("/requests") + "?function=a&function=b")
        assert "twice" in refused(twice, "/requests", "malformed")["message"]

        wired = waiting[0]
        got = ok(await api.get(path("/requests/{id}", id=wired.id)), "/requests/{request_id}")["request"]
        assert got["id"] == wired.id and got["short_id"] == wired.id[:8]
        assert got["kwargs"] == {"amount": 5000} and got["run_id"] == "run-1"
        assert got["approvers"] == APPROVERS and got["approvals"] == 1
        assert got["fingerprint"] == wired.fingerprint and got["status"] == "pending"
        assert (got["decision"], got["votes"], got["execution"]) == (None, [], None)
        assert got["tool"] == wired.tool and got["tool"].endswith("wire")
        assert datetime.fromisoformat(got["expires_at"]) == wired.expires_at
        question = ok(await api.get(path("/requests/{id}", id=waiting[2].id)), "/requests/{request_id}")
        assert question["request"]["kind"] == "question"
        assert question["request"]["message"] == "Which region?"

        for unknown in ("0" * 32, "a", "....----", "x" * 129):
            response = await api.get(path("/requests/{id}", id=quote(unknown, safe="")))
            refused(response, "/requests/{request_id}", "unknown_request")
        traversal = await api.get(PREFIX + "/requests/..%2F..%2Fgrants")  # a / once decoded: no route
        assert traversal.status_code == 404 and traversal.json()["error"]["code"] == "not_found"
        assert len(await hl.pending()) == 3
        tg.cancel_scope.cancel()


# -- deciding --------------------------------------------------------------------------------


async def test_approve_deny_answer_and_cancel_as_the_tokens_user(hl: HumanLayer) -> None:
    runs: list[int] = []

    @hl.require_approval(approvers=APPROVERS)
    async def wire(amount: int) -> str:
        runs.append(amount)
        return f"wired {amount}"

    ask = hl.human_as_tool(approvers=APPROVERS)
    decision = "/requests/{request_id}/decision"

    async with anyio.create_task_group() as tg, client(hl, ALICE) as alice, client(hl, BOB) as bob:
        approved = Call(tg, lambda: wire(5000))
        [request] = await wait_for_pending(hl)
        body = ok(await alice.post(path(decision, request_id=request.id), json={"approved": True}), decision)
        assert await approved.ended() == "wired 5000" and runs == [5000]
        assert (body["stands"], body["needed"], body["votes"], body["grant"]) == (True, 1, [], None)
        made = body["decision"]
        assert (made["by"], made["user"], made["via"], made["status"]) == (
            ALICE_EMAIL,
            "alice",
            "api",
            "approved",
        )
        shown = ok(await bob.get(path("/requests/{id}", id=request.id)), "/requests/{request_id}")["request"]
        assert shown["status"] == "approved" and shown["decision"] == made
        assert shown["execution"] == {"state": "executed", "outcome": "ok"}

        denied = Call(tg, lambda: wire(9000))
        [request] = await wait_for_pending(hl)
        sent = {"approved": False, "comment": "  not this month  "}
        body = ok(await bob.post(path(decision, request_id=request.id), json=sent), decision)
        assert (body["decision"]["by"], body["decision"]["comment"]) == ("bob", "not this month")
        outcome = await denied.ended()
        assert isinstance(outcome, ApprovalDenied) and "not this month" in str(outcome)
        assert runs == [5000]

        asked = Call(tg, lambda: ask("Which region?"))
        [question] = await wait_for_pending(hl)
        refused(
            await bob.post(path(decision, request_id=question.id), json={"approved": True}),
            decision,
            "not_decidable",
        )
        answer = "/requests/{request_id}/answer"
        refused(
            await bob.post(path(answer, request_id=question.id), json={"text": "  "}), answer, "malformed"
        )
        body = ok(await bob.post(path(answer, request_id=question.id), json={"text": "eu-west-1"}), answer)
        assert body["decision"]["answer"] == "eu-west-1" and await asked.ended() == "eu-west-1"

        cancelled = Call(tg, lambda: wire(1))
        [request] = await wait_for_pending(hl)
        error = refused(
            await bob.post(path(answer, request_id=request.id), json={"text": "yes"}), answer, "not_decidable"
        )
        assert "not a question" in error["message"]
        cancel = "/requests/{request_id}/cancel"
        body = ok(await bob.post(path(cancel, request_id=request.id), json={"reason": "obsolete"}), cancel)
        assert (body["decision"]["status"], body["decision"]["comment"]) == ("cancelled", "obsolete")
        outcome = await cancelled.ended()
        assert isinstance(outcome, ApprovalDenied) and outcome.decision.via == "api"
        assert runs == [5000]


async def test_a_vote_on_two_approvals_waits_then_a_late_answer_gets_the_standing_decision(
    hl: HumanLayer,
) -> None:
    @hl.require_approval(approvers=APPROVERS, approvals=2)
    async def failover(region: str) -> str:
        return f"failed over {region}"

    decision = "/requests/{request_id}/decision"
    async with (
        anyio.create_task_group() as tg,
        client(hl, ALICE) as alice,
        client(hl, BOB) as bob,
        client(hl, CAROL) as carol,
    ):
        call = Call(tg, lambda: failover("eu"))
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        body = ok(await alice.post(url, json={"approved": True, "comment": "fine"}), decision)
        assert (body["decision"], body["stands"], body["needed"]) == (None, True, 2)
        [vote] = body["votes"]
        assert (vote["by"], vote["user"], vote["approved"], vote["comment"]) == (
            ALICE_EMAIL,
            "alice",
            True,
            "fine",
        )
        shown = ok(await carol.get(path("/requests/{id}", id=request.id)), "/requests/{request_id}")
        assert shown["request"]["status"] == "pending" and shown["request"]["votes"] == [vote]

        body = ok(await bob.post(url, json={"approved": True}), decision)
        assert body["decision"]["status"] == "approved" and len(body["decision"]["votes"]) == 2
        assert await call.ended() == "failed over eu"

        late = refused(
            await carol.post(url, json={"approved": False, "comment": "no"}), decision, "already_decided"
        )
        assert late["decision"] == body["decision"]  # the one that stands, in full
        assert "already approved" in late["message"]
        stored = await hl.get(request.id)
        assert stored.decision is not None and stored.decision.approved


async def test_edits_are_checked_by_argument_and_a_stale_fingerprint_decides_nothing(hl: HumanLayer) -> None:
    paid: list[float] = []

    @hl.require_approval(approvers=APPROVERS, editable=["amount"])
    async def pay(amount: float, memo: str) -> str:
        paid.append(amount)
        return f"paid {amount}"

    @hl.require_approval(approvers=APPROVERS, editable=["amount"], approvals=2)
    async def refund(amount: float) -> str:
        return f"refunded {amount}"

    decision = "/requests/{request_id}/decision"
    async with anyio.create_task_group() as tg, client(hl, ALICE) as alice, client(hl, BOB) as bob:
        call = Call(tg, lambda: pay(5000.0, "invoice 7"))
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        for edits, argument in (({"amount": "lots"}, "amount"), ({"memo": "x"}, "memo")):
            error = refused(
                await alice.post(url, json={"approved": True, "edits": edits}), decision, "invalid_edit"
            )
            assert error["argument"] == argument and "nothing was decided" in error["message"]
        error = refused(
            await alice.post(url, json={"approved": False, "edits": {"amount": 1}}), decision, "invalid_edit"
        )
        assert error["argument"] == "" and "denial" in error["message"]
        assert (await hl.get(request.id)).decision is None and paid == []

        body = ok(await alice.post(url, json={"approved": True, "edits": {"amount": 4000}}), decision)
        assert body["decision"]["edits"] == {"amount": 4000}
        assert await call.ended() == "paid 4000" and paid == [4000]

        Call(tg, lambda: refund(100.0))
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        seen = ok(await alice.get(path("/requests/{id}", id=request.id)), "/requests/{request_id}")
        before = seen["request"]["fingerprint"]
        assert before == request.fingerprint
        body = ok(await bob.post(url, json={"approved": True, "edits": {"amount": 10}}), decision)
        assert body["decision"] is None and [v["by"] for v in body["votes"]] == ["bob"]
        error = refused(
            await alice.post(url, json={"approved": True, "seen": before}), decision, "arguments_edited"
        )
        assert "nothing was decided" in error["message"]
        now = ok(await alice.get(path("/requests/{id}", id=request.id)), "/requests/{request_id}")["request"]
        assert now["status"] == "pending" and [v["by"] for v in now["votes"]] == ["bob"]
        assert now["kwargs"] == {"amount": 10} and now["fingerprint"] != before
        body = ok(await alice.post(url, json={"approved": True, "seen": now["fingerprint"]}), decision)
        assert body["decision"]["status"] == "approved"
        tg.cancel_scope.cancel()


async def test_grants_given_listed_revoked_and_confirmed(hl: HumanLayer) -> None:
    @hl.require_approval(approvers=APPROVERS)
    async def send_email(to: str) -> str:
        return f"sent to {to}"

    @hl.require_approval(approvers=APPROVERS, approvals=2)
    async def failover(region: str) -> str:
        return f"failed over {region}"

    decision = "/requests/{request_id}/decision"
    revoke, confirm = "/grants/{grant_id}/revoke", "/grants/{grant_id}/confirm"
    async with (
        anyio.create_task_group() as tg,
        client(hl, ALICE) as alice,
        client(hl, BOB) as bob,
        client(hl, MALLORY) as mallory,
    ):
        call = Call(tg, lambda: send_email("jane@example.com"))
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        for grant in (0, -5, "1h", True, 31 * 86400, 1e999):
            sent = json.dumps({"approved": True, "grant": grant}).replace("Infinity", "1e999")
            refused(await alice.post(url, content=sent), decision, "malformed")
        error = refused(
            await alice.post(url, json={"approved": False, "grant": 60}), decision, "not_decidable"
        )
        assert "grant goes with an approval" in error["message"]

        before = datetime.now(UTC)
        body = ok(await alice.post(url, json={"approved": True, "grant": 3600}), decision)
        given = body["grant"]
        assert given["function"].endswith("send_email") and given["where"] == {"to": "jane@example.com"}
        assert (given["by"], given["users"], given["confirmed"], given["live"]) == (
            [ALICE_EMAIL],
            ["alice"],
            True,
            True,
        )
        expires = datetime.fromisoformat(given["expires_at"])
        assert before + timedelta(hours=1) <= expires <= datetime.now(UTC) + timedelta(hours=1)
        assert await call.ended() == "sent to jane@example.com"
        with anyio.fail_after(5):  # the same call runs without asking
            assert await send_email("jane@example.com") == "sent to jane@example.com"
        assert ok(await mallory.get(path("/grants")), "/grants")["grants"] == [{**given, "uses": 1}]

        error = refused(await mallory.post(path(revoke, grant_id=given["id"])), revoke, "not_an_approver")
        assert error["requester"] is False
        refused(await bob.post(path(revoke, grant_id="0" * 32)), revoke, "unknown_grant")
        refused(await bob.post(path(revoke, grant_id="x")), revoke, "unknown_grant")
        refused(await bob.post(path(revoke, grant_id=given["id"]), json={"why": "x"}), revoke, "malformed")
        revoked = ok(await bob.post(path(revoke, grant_id=given["id"]), json={}), revoke)["grant"]
        assert (revoked["revoked_by"], revoked["live"]) == ("bob", False) and revoked["revoked_at"]
        assert ok(await bob.get(path("/grants")), "/grants")["grants"] == []
        assert ok(await bob.get(path("/grants"), params={"all": "true"}), "/grants")["grants"] == [revoked]
        refused(await bob.get(path("/grants"), params={"all": "yes"}), "/grants", "malformed")
        error = refused(await bob.post(path(confirm, grant_id=given["id"])), confirm, "grant_not_live")
        assert "cannot be confirmed" in error["message"]

        quorum = await hl.grant(failover, by=ALICE_EMAIL, expires_in=timedelta(hours=1))
        assert not quorum.confirmed
        refused(await mallory.post(path(confirm, grant_id=quorum.id)), confirm, "not_an_approver")
        confirmed = ok(await bob.post(path(confirm, grant_id=quorum.id)), confirm)["grant"]
        assert (confirmed["by"], confirmed["confirmed"], confirmed["approvals"]) == (
            [ALICE_EMAIL, "bob"],
            True,
            2,
        )
        with anyio.fail_after(5):
            assert await failover("eu") == "failed over eu"
        tg.cancel_scope.cancel()


async def test_a_non_approver_and_the_requester_are_refused_and_nothing_is_decided(hl: HumanLayer) -> None:
    @hl.require_approval(approvers=APPROVERS)
    async def wire(amount: int) -> str:
        return f"wired {amount}"

    async def for_alice() -> object:
        with hl.on_behalf_of(ALICE_EMAIL):
            return await wire(5000)

    decision, cancel = "/requests/{request_id}/decision", "/requests/{request_id}/cancel"
    async with (
        anyio.create_task_group() as tg,
        client(hl, ALICE) as alice,
        client(hl, BOB) as bob,
        client(hl, MALLORY) as mallory,
    ):
        call = Call(tg, for_alice)
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        error = refused(await mallory.post(url, json={"approved": True}), decision, "not_an_approver")
        assert error["requester"] is False and "mallory is not an approver" in error["message"]
        refused(await mallory.post(path(cancel, request_id=request.id)), cancel, "not_an_approver")
        # by comes from the token, never the body: naming Bob is a malformed body, not Bob
        refused(await mallory.post(url, json={"approved": True, "by": "bob"}), decision, "malformed")
        error = refused(await alice.post(url, json={"approved": True}), decision, "not_an_approver")
        assert error["requester"] is True and "alice requested this call" in error["message"]
        assert (await hl.get(request.id)).decision is None
        ok(await bob.post(url, json={"approved": True}), decision)
        assert await call.ended() == "wired 5000"


# -- authentication --------------------------------------------------------------------------


async def test_no_token_or_an_unknown_one_is_401_and_tokens_never_show(hl: HumanLayer) -> None:
    listing = "/requests"
    with capture_logs() as logs:
        async with client(hl, None) as anonymous:
            for headers in (
                {},
                {"Authorization": "Bearer not-a-token-of-anyone-at-all"},
                {"Authorization": f"Basic {ALICE}"},
                {"Authorization": "Bearer"},
                {"Authorization": f"Bearer {ALICE}x"},
                {"Authorization": f"Bearer {ALICE[:-1]}"},
            ):
                response = await anonymous.get(path(listing), headers=headers)
                refused(response, listing, "unauthenticated")
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert ALICE not in response.text
            response = await anonymous.get(path(listing), params={"token": ALICE})  # never in a URL
            refused(response, listing, "unauthenticated")
        async with client(hl, f"  {ALICE}") as alice:  # the spaces before it are no part of it
            ok(await alice.get(path(listing)), listing)
    assert sum(entry.get("reason") == "unauthenticated" for entry in logs) == 7
    assert not [entry for entry in logs if ALICE[:16] in repr(entry)]
    [api] = hl.channels
    assert (
        ALICE[:16] not in repr(api) and repr(api) == "ApiChannel(users=['alice', 'bob', 'carol', 'mallory'])"
    )


def test_hashed_tokens_from_a_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "api-tokens"
    upper = "sha256:" + hash_token(BOB).removeprefix("sha256:").upper()  # hex in either case
    tokens.write_text(f"# who may decide\n\nalice {hash_token(ALICE)}\n  bob   {upper}  \n")
    from_file = ApiChannel.from_file(tokens, emails={"alice": ALICE_EMAIL})
    assert from_file.users == ("alice", "bob")
    monkeypatch.setenv(TOKENS_ENV, f"carol {hash_token(CAROL)}\n")
    assert ApiChannel().users == ("carol",)
    assert ApiChannel(tokens={"alice": ALICE}).users == ("alice",)  # given tokens: the env is not read
    mixed = ApiChannel(tokens={"alice": ALICE}, token_hashes={"bob": hash_token(BOB)})
    assert mixed.users == ("alice", "bob")
    assert hash_token(ALICE) == "sha256:" + hashlib.sha256(ALICE.encode()).hexdigest()

    monkeypatch.delenv(TOKENS_ENV)
    pasted = "bob-token-pasted-in-place-of-its-hash"
    for make, problem in (
        (lambda: ApiChannel(), "needs users"),
        (lambda: ApiChannel(tokens={"alice": "short"}), "at least 16"),
        (lambda: ApiChannel(tokens={"alice": "sixteen chars with spaces"}), "visible ASCII"),
        (lambda: ApiChannel(tokens={"al ice": ALICE}), "without spaces"),
        (lambda: ApiChannel(tokens={"alice": ALICE, "bob": ALICE}), "same token"),
        (lambda: ApiChannel(tokens={"alice": ALICE}, token_hashes={"alice": hash_token(BOB)}), "twice"),
        (lambda: ApiChannel(token_hashes={"bob": pasted}), "sha256:<64 hex digits>"),
        (lambda: ApiChannel(tokens={"alice": ALICE}, emails={"eve": "eve@x.com"}), "not one of the users"),
        (lambda: ApiChannel(tokens={}), "at least one user"),
        (lambda: ApiChannel.from_file(tmp_path / "missing"), "cannot read"),
        (lambda: hash_token("short"), "at least 16"),
    ):
        with pytest.raises(ConfigurationError, match=re.escape(problem)) as raised:
            make()
        assert pasted not in str(raised.value)
    for text, problem in (
        (f"bob {pasted}\n", "line 1 of"),
        (f"alice {hash_token(ALICE)}\nbob sha256:{'0' * 63}\n", "line 2 of"),
        (f"alice {hash_token(ALICE)} extra\n", "line 1 of"),
        (f"alice {hash_token(ALICE)}\nalice {hash_token(BOB)}\n", "names 'alice' twice (line 2)"),
    ):
        tokens.write_text(text)
        with pytest.raises(ConfigurationError, match=re.escape(problem)) as raised:
            ApiChannel.from_file(tokens)
        assert pasted not in str(raised.value)
        monkeypatch.setenv(TOKENS_ENV, text)
        with pytest.raises(ConfigurationError, match=re.escape(problem.replace(" of", " of $" + TOKENS_ENV))):
            ApiChannel()


async def test_hashed_tokens_decide_as_their_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"alice {hash_token(ALICE)}\n")
    monkeypatch.setenv(TOKENS_ENV, f"bob {hash_token(BOB)}\n")
    decision = "/requests/{request_id}/decision"
    for api, token, who in (
        (ApiChannel.from_file(tokens, emails={"alice": ALICE_EMAIL}), ALICE, ALICE_EMAIL),
        (ApiChannel(), BOB, "bob"),
    ):
        async with HumanLayer([api], listen="127.0.0.1:0") as hl, anyio.create_task_group() as tg:

            @hl.require_approval(approvers=APPROVERS)
            async def wire(amount: int) -> str:
                return f"wired {amount}"

            call = Call(tg, lambda: wire(10))
            [request] = await wait_for_pending(hl)
            async with client(hl, CAROL) as stranger:  # Carol's token is nobody's here
                refused(await stranger.get(path("/requests")), "/requests", "unauthenticated")
            async with client(hl, token) as approver:
                url = path(decision, request_id=request.id)
                assert (
                    ok(await approver.post(url, json={"approved": True}), decision)["decision"]["by"] == who
                )
            assert await call.ended() == "wired 10"


# -- the audit trail and stats ---------------------------------------------------------------


async def test_audit_and_stats(hl: HumanLayer) -> None:
    @hl.require_approval(approvers=APPROVERS)
    async def wire(amount: int) -> str:
        return f"wired {amount}"

    decision = "/requests/{request_id}/decision"
    async with anyio.create_task_group() as tg, client(hl, BOB) as bob:
        for approved in (True, False):
            call = Call(tg, lambda: wire(5))
            [request] = await wait_for_pending(hl)
            ok(await bob.post(path(decision, request_id=request.id), json={"approved": approved}), decision)
            await call.ended()

        entries = ok(await bob.get(path("/audit"), params={"request_id": request.id}), "/audit")["entries"]
        events = [entry["event"] for entry in entries]
        assert events[:3] == ["approval.requested", "approval.delivered", "approval.decided"]
        assert {entry["request_id"] for entry in entries} == {request.id}
        assert entries[1]["fields"]["channel"] == "api"
        assert (entries[2]["fields"]["via"], entries[2]["fields"]["by"]) == ("api", "bob")
        everything = ok(await bob.get(path("/audit")), "/audit")["entries"]
        assert len(everything) > len(entries)
        assert ok(await bob.get(path("/audit"), params={"since": "1h"}), "/audit")["entries"] == everything
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert ok(await bob.get(path("/audit"), params={"since": later}), "/audit")["entries"] == []
        for since in ("yesterday", "9" * 30 + "d"):
            error = refused(await bob.get(path("/audit"), params={"since": since}), "/audit", "malformed")
            assert error["message"].startswith("since:")

        [stats] = ok(await bob.get(path("/stats")), "/stats")["stats"]
        assert (stats["function"], stats["requests"], stats["approved"], stats["denied"]) == ("wire", 2, 1, 1)
        assert stats["top_approvers"] == [{"by": "bob", "count": 2}]
        # The keys and values humanlayer-async stats --json gives
        assert list(stats) == [field.name for field in dataclasses.fields(ToolStats)]
        [expected] = tool_stats(await hl.store.history())
        assert stats == to_json(dataclasses.asdict(expected), "stats")
        assert ok(await bob.get(path("/stats"), params={"since": later}), "/stats")["stats"] == []
        refused(await bob.get(path("/stats"), params={"since": "soon"}), "/stats", "malformed")


# -- the OpenAPI document --------------------------------------------------------------------


async def test_the_openapi_document_describes_exactly_the_routes_served(hl: HumanLayer) -> None:
    async with client(hl, None) as anonymous:
        served = await anonymous.get(path("/openapi.json"))  # no token needed
        assert served.status_code == 200 and served.json() == DOCUMENT
    assert DOCUMENT["openapi"] == "3.1.0"

    documented = {(method.upper(), route) for route, item in DOCUMENT["paths"].items() for method in item}
    assert documented == {(op.method, PREFIX + op.path) for op in OPERATIONS}
    routes = {getattr(route, "path", "") for route in hl.asgi_app.routes} - {"/healthz"}
    assert routes == {route for _, route in documented} | {
        PREFIX + "/{rest:path}"
    }  # and the 404 for the rest
    async with client(hl, BOB) as bob:
        for route, item in DOCUMENT["paths"].items():
            concrete = route.replace("{request_id}", "0" * 32).replace("{grant_id}", "0" * 32)
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                response = await bob.request(method, concrete)
                if method.lower() in item:
                    assert response.status_code != 405, (method, route)
                else:
                    assert response.status_code == 405, (method, route, response.text)
                    assert response.headers["allow"] == ", ".join(sorted(m.upper() for m in item))
                    if method != "HEAD":
                        error = response.json()["error"]
                        assert error["code"] == "method_not_allowed"
        for nowhere in ("/nothing", "/requests/x/y/z", "/", "", "/requests/..", "/grants/x", "/%0A"):
            response = await bob.get(PREFIX + nowhere)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

    # Every error code of the contract, with its status, in the document and nowhere else.
    assert {code: status for code, (status, _) in ERRORS.items()} == API_MD_CODES
    error_schema = DOCUMENT["components"]["schemas"]["Error"]
    assert set(error_schema["properties"]["error"]["properties"]["code"]["enum"]) == set(API_MD_CODES)
    used: dict[str, set[int]] = {}
    for item in DOCUMENT["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status != "200":
                    for code in response["content"]["application/json"]["schema"]["allOf"][1]["properties"][
                        "error"
                    ]["properties"]["code"]["enum"]:
                        used.setdefault(code, set()).add(int(status))
                        assert code in response["description"]
    assert used == {code: {status} for code, status in API_MD_CODES.items() if code != "not_found"}
    assert "| `not_found` | 404 |" in DOCUMENT["info"]["description"]

    # Every schema is one, every reference resolves, and every operation has an id of its own.
    for schema in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    text = json.dumps(DOCUMENT)
    for target in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', text):
        assert target in DOCUMENT["components"]["schemas"]
    ids = [op["operationId"] for item in DOCUMENT["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)


# -- bad input, a stopped HumanLayer, a failing store ----------------------------------------


async def test_malformed_bodies_are_400_and_decide_nothing(hl: HumanLayer) -> None:
    @hl.require_approval(approvers=APPROVERS)
    async def wire(amount: int) -> str:
        return f"wired {amount}"

    decision = "/requests/{request_id}/decision"
    deep = '{"approved": true, "edits": {"amount": ' + "[" * 40 + "]" * 40 + "}}"
    async with anyio.create_task_group() as tg, client(hl, BOB) as bob:
        call = Call(tg, lambda: wire(5))
        [request] = await wait_for_pending(hl)
        url = path(decision, request_id=request.id)
        for body, said in (
            ("", "approved is required"),
            ("{}", "approved is required"),
            ("{", "not JSON"),
            ("[true]", "a JSON object"),
            ('"approved"', "a JSON object"),
            ('{"approved": "yes"}', "approved must be true or false"),
            ('{"approved": 1}', "approved must be true or false"),
            ('{"approved": null}', "approved is required"),
            ('{"approved": true, "approved": false}', "not JSON"),
            ('{"approved": true, "comment": 5}', "comment must be a string"),
            ('{"approved": true, "comment": "' + "x" * 2001 + '"}', "at most 2000"),
            ('{"approved": true, "edits": [1]}', "edits must be an object"),
            ('{"approved": true, "edits": {"' + "a" * 201 + '": 1}}', "edits must be an object"),
            ('{"approved": true, "seen": "abc"}', "fingerprint"),
            ('{"approved": true, "grant": NaN}', "not JSON"),
            ('{"approved": true, "grant": 1e999}', "not JSON"),
            ('{"approved": true, "Approved": true}', "unknown field 'Approved'"),
            (deep, "deeper than 32"),
            ('{"approved": true, "comment": "' + "x" * 70_000 + '"}', "over 65536 bytes"),
            ("[" * 50_000, "not JSON"),
            ('{"approved": true}'.encode("utf-16").decode("latin-1"), "not JSON"),
        ):
            response = await bob.post(url, content=body.encode("latin-1"))
            assert said in refused(response, decision, "malformed")["message"], body[:50]
        huge = await bob.post(url, content=b"{" + b" " * (1024 * 1024 + 1) + b"}")
        assert huge.status_code == 413  # the listener's own limit, before any route reads it
        assert (await hl.get(request.id)).decision is None
        ok(await bob.post(url, json={"approved": True, "comment": None, "edits": {}}), decision)
        assert await call.ended() == "wired 5"


async def test_a_humanlayer_not_running_and_a_failing_store_are_503() -> None:
    stopped = HumanLayer([channel()], listen=None)
    async with api_client(stopped, BOB) as bob:
        refused(await bob.get(path("/requests")), "/requests", "unavailable")
        ok(await bob.get(path("/openapi.json")), "/openapi.json")

    class DownStore(MemoryStore):
        down = False

        async def list_pending(self, **filters: Any) -> Any:
            if self.down:
                raise StoreError("the database is gone")
            return await super().list_pending(**filters)

        async def decide(self, decision: Decision) -> Decision:
            if self.down:
                raise StoreError("the database is gone")
            return await super().decide(decision)

    store = DownStore()
    async with (
        HumanLayer([channel()], store=store, listen=None) as hl,
        anyio.create_task_group() as tg,
        api_client(hl, BOB) as bob,
    ):

        @hl.require_approval(approvers=APPROVERS)
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        call = Call(tg, lambda: wire(5))
        [request] = await wait_for_pending(hl)
        ok(await bob.get(path("/requests")), "/requests")
        store.down = True
        decide = "/requests/{request_id}/decision"
        with capture_logs() as logs:
            error = refused(await bob.get(path("/requests")), "/requests", "unavailable")
            refused(
                await bob.post(path(decide, request_id=request.id), json={"approved": True}),
                decide,
                "unavailable",
            )
        assert "database" not in error["message"]  # the store's own words stay in the log
        refusals = [e for e in logs if e["event"] == "listener.refused"]
        assert [(e["status"], e["reason"], e["error"]) for e in refusals] == 2 * [
            (503, "unavailable", "the database is gone")
        ]
        store.down = False  # back: the same answer decides
        ok(await bob.post(path(decide, request_id=request.id), json={"approved": True}), decide)
        assert await call.ended() == "wired 5"


async def test_a_decider_that_cannot_cancel_says_so_and_a_lost_race_gets_the_standing_decision() -> None:
    request = make_request("a" * 32, approvers=("bob",))
    late = LateDecider(request, decision(request.id, True, "carol"))  # no cancel(): not the engine's
    api = channel()
    async with anyio.create_task_group() as tg:
        await tg.start(api.run, late)
        async with serving(api.routes()) as http:
            http.headers["Authorization"] = f"Bearer {BOB}"
            cancel, decide = "/requests/{request_id}/cancel", "/requests/{request_id}/decision"
            error = refused(await http.post(path(cancel, request_id=request.id)), cancel, "not_decidable")
            assert "cannot cancel" in error["message"]
            response = await http.post(path(decide, request_id=request.id), json={"approved": False})
            error = refused(response, decide, "already_decided")
            assert (error["decision"]["by"], error["decision"]["approved"]) == ("carol", True)
            assert late.answers == [(request.id, "bob", "api")]
        tg.cancel_scope.cancel()


async def test_values_without_a_json_form_are_shown_as_their_repr(hl: HumanLayer) -> None:
    class Box:
        def __repr__(self) -> str:
            return "Box(3)"

    @hl.require_approval(approvers=APPROVERS)
    async def ship(box: Box, contents: dict[str, Any], ratio: float) -> str:
        return "shipped"

    async with anyio.create_task_group() as tg, client(hl, BOB) as bob:
        Call(tg, lambda: ship(Box(), {"inner": [Box(), 1], "fine": "yes"}, float("nan")))
        [request] = await wait_for_pending(hl)
        shown = ok(await bob.get(path("/requests/{id}", id=request.id)), "/requests/{request_id}")
        assert shown["request"]["kwargs"] == {
            "box": "Box(3)",
            "contents": {"inner": ["Box(3)", 1], "fine": "yes"},
            "ratio": "nan",
        }
        tg.cancel_scope.cancel()


# -- hostile input on every route ------------------------------------------------------------

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REAL_ID, REAL_GRANT = "@@id@@", "@@grant@@"
"""Placeholders replaced by the waiting request's id and a live grant's id."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["approved", "comment", "edits", "grant", "seen", "text", "reason", "by", "via"]
)
bodies = st.one_of(
    st.dictionaries(field_names | st.text(max_size=12), json_values, max_size=5)
    .map(json.dumps)
    .map(str.encode),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=512),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"null",
            b"[" * 50_000,
            b"{" * 50_000,
            b'{"a":' * 5000,
            b"\x00" * 70_000,
            b'"' + b"x" * 70_000,
        ]
    ),
)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "boolean": st.booleans(),
    "string": st.text(max_size=60) | st.sampled_from(["0" * 16, "f" * 16]),
    "number": st.floats(min_value=-1e9, max_value=1e9) | st.integers(),
    "object": st.dictionaries(
        st.sampled_from(["amount", "memo"]) | st.text(max_size=8), json_values, max_size=3
    ),
}


def documented_bodies(template: str) -> st.SearchStrategy[bytes]:
    """Bodies of the fields the document gives the route (every required one), each of its
    documented type or of any: past the JSON parsing, into each field's own check."""
    operation = DOCUMENT["paths"][template].get("post")
    if operation is None:
        return bodies
    name = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schema = DOCUMENT["components"]["schemas"][name]

    def drawn(field: str) -> st.SearchStrategy[Any]:
        declared = schema["properties"][field]
        kind = declared.get("type") or declared["anyOf"][0]["type"]
        return st.one_of(PLAUSIBLE[kind], PLAUSIBLE[kind], json_values)

    required = {field: drawn(field) for field in schema["required"]}
    optional = {field: drawn(field) for field in schema["properties"] if field not in required}
    return st.fixed_dictionaries(required, optional=optional).map(json.dumps).map(str.encode)


near_queries = st.fixed_dictionaries(
    {},
    optional={
        "function": st.sampled_from(["wire", ""]) | st.text(max_size=20),
        "run_id": st.text(max_size=20),
        "kind": st.sampled_from(["approval", "question", "both"]),
        "all": st.sampled_from(["true", "false", "1"]),
        "since": st.sampled_from(["7d", "1h", "2020-01-01", "2020-01-01T00:00:00+05:00", "-1d"])
        | st.text(max_size=20),
        "request_id": st.sampled_from(["0" * 32, "x"]) | st.text(max_size=40),
    },
)
ids = st.one_of(
    st.sampled_from(
        [REAL_ID, REAL_GRANT, REAL_ID + "0", "../" + REAL_ID, "..", "%2e%2e", REAL_ID.upper(), ""]
    ),
    st.text(max_size=140),
)
templates = st.sampled_from([*sorted(DOCUMENT["paths"]), PREFIX + "/{rest}", PREFIX + "/requests/{rest}/x"])
methods = st.sampled_from(["GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
queries = st.dictionaries(
    st.sampled_from(["function", "run_id", "kind", "all", "since", "request_id", "token"])
    | st.text(max_size=10),
    st.text(max_size=40) | st.sampled_from(["7d", "true", "approval", "1" * 400 + "d", "2025-13-01"]),
    max_size=4,
)
MALLORYS = f"Bearer {MALLORY}"
authorizations = st.sampled_from(
    [
        MALLORYS,
        MALLORYS,
        None,
        "",
        "Bearer",
        f"Basic {MALLORY}",
        "Bearer nobody's-token",
        f"Bearer {ALICE[:-1]}",
    ]
)
"""``Authorization`` headers: Mallory's (a user, never an approver), and none that is anyone's."""


@dataclasses.dataclass
class Target:
    """A running HumanLayer whose one waiting request only Alice, Bob or Carol may decide."""

    hl: HumanLayer
    request_id: str
    grant_id: str
    runs: list[int]


@pytest.fixture
async def target(hl: HumanLayer) -> AsyncIterator[Target]:
    runs: list[int] = []

    @hl.require_approval(approvers=APPROVERS, editable=["amount"], approvals=2)
    async def wire(amount: int) -> str:
        runs.append(amount)
        return f"wired {amount}"

    async with anyio.create_task_group() as tg:
        call = Call(tg, lambda: wire(5000))
        [request] = await wait_for_pending(hl)
        grant = await hl.grant(wire, by=ALICE_EMAIL, expires_in=3600)
        yield Target(hl, request.id, grant.id, runs)
        # Once the fuzzing is over, the genuine answers still decide, and the tool runs once.
        assert (await hl.get(request.id)).decision is None and runs == []
        assert [g.by for g in await hl.grants()] == [(ALICE_EMAIL,)]
        decision = "/requests/{request_id}/decision"
        for token in (ALICE, BOB):
            async with client(hl, token) as approver:
                ok(
                    await approver.post(path(decision, request_id=request.id), json={"approved": True}),
                    decision,
                )
        assert await call.ended() == "wired 5000" and runs == [5000]


def concrete(template: str, request_id: str, target: Target) -> str:
    real = request_id.replace(REAL_ID, target.request_id).replace(REAL_GRANT, target.grant_id)
    real = real.replace(REAL_ID.upper(), target.request_id.upper())
    segment = quote(real, safe="%") if real.startswith("%") else quote(real, safe="")
    return template.replace("{request_id}", segment).replace("{grant_id}", segment).replace("{rest}", segment)


async def hostile(target: Target, method: str, url: str, authorization: str | None, **options: Any) -> None:
    """One hostile request: a JSON 4xx (or a 200 to a read), never a 5xx, a hang or a decision."""
    headers = {} if authorization is None else {"Authorization": authorization}
    with capture_logs() as logs, anyio.fail_after(10):
        async with client(target.hl, None) as anyone:
            response = await anyone.request(method, url, headers=headers, **options)
    assert response.status_code < 500, response.text[:300]
    assert not [entry for entry in logs if entry["event"] == "listener.error"]
    if method != "HEAD" and response.request.url.path.startswith(PREFIX):  # not ".." normalized away
        body = response.json()
        if response.status_code != 200:
            code = body["error"]["code"]
            assert API_MD_CODES[code] == response.status_code, body
    if response.status_code == 200:  # a read: Mallory may read, and anyone the document
        assert method == "GET" and (authorization == MALLORYS or url.endswith("/openapi.json")), url
    assert (await target.hl.get(target.request_id)).decision is None and target.runs == []


@FUZZ
@given(
    template=templates,
    request_id=ids,
    method=methods,
    authorization=authorizations,
    query=queries,
    body=bodies,
)
async def test_hostile_input_on_every_route(
    target: Target,
    template: str,
    request_id: str,
    method: str,
    authorization: str | None,
    query: dict[str, str],
    body: bytes,
) -> None:
    url = concrete(template, request_id, target)
    await hostile(target, method, url, authorization, params=query, content=body)


routes_and_bodies = st.sampled_from(sorted(DOCUMENT["paths"])).flatmap(
    lambda template: st.tuples(st.just(template), documented_bodies(template) | bodies)
)


@settings(FUZZ, max_examples=150)
@given(
    route=routes_and_bodies,
    request_id=st.sampled_from([REAL_ID, REAL_GRANT]) | ids,
    query=st.one_of(st.just({}), near_queries, queries),
)
async def test_hostile_input_from_mallory_with_each_routes_own_method(
    target: Target, route: tuple[str, bytes], request_id: str, query: dict[str, str]
) -> None:
    """Mallory's token gets past authentication, so every body reaches the checks behind it."""
    template, body = route
    method = next(iter(DOCUMENT["paths"][template])).upper()
    await hostile(
        target, method, concrete(template, request_id, target), MALLORYS, params=query, content=body
    )
