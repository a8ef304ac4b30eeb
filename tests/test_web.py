"""The web console: plain HTTP against the real listener, then headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest
from anyio.abc import ByteReceiveStream
from structlog.testing import capture_logs

from humanlayer_async import ApprovalDenied, ConfigurationError, Decision, HumanLayer, Status
from humanlayer_async.channels import WebChannel, _web_page
from humanlayer_async.stores import store_from_url
from humanlayer_async.testing import wait_for_pending

from .conftest import LateDecider, make_request, serving

pytestmark = pytest.mark.anyio

KEY = "k" * 24
ALICE = "alice-key-0123456789"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def signed_in(client: httpx.AsyncClient, web: WebChannel, user: str | None = None) -> str:
    """Sign ``client`` in with a sign-in link; return the page's CSRF token."""
    response = await client.get(web.login_url(user=user))
    assert response.status_code == 303
    assert response.headers["location"] == "/approvals"
    page = await client.get(str(web.url))
    assert page.status_code == 200
    return csrf_of(page.text)


def refusals(logs: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    return [(entry["status"], entry["reason"]) for entry in logs if entry["event"] == "listener.refused"]


# -- plain HTTP ----------------------------------------------------------------------------


async def test_sign_in_link_sets_a_strict_httponly_cookie_and_the_page_lists_the_request() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0", run_id="nightly-42") as hl:

        @hl.require_approval(context={"ticket": "OPS-7"})
        async def send_email(to: str, subject: str) -> str:
            """Send an email to a customer."""
            return "sent"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(send_email, "jane@example.com", "Your refund")
            [request] = await wait_for_pending(hl, within=5)
            with capture_logs() as logs:
                sign_in = await client.get(str(web.url))
                link = web.login_url()
                signed = await client.get(link)
            assert sign_in.status_code == 401 and 'action="/approvals/sign-in"' in sign_in.text
            assert link.startswith(f"{web.url}?code=") and KEY not in link
            assert signed.status_code == 303 and signed.headers["location"] == "/approvals"
            cookie = signed.headers["set-cookie"].lower()
            for attribute in ("httponly", "samesite=strict", "path=/approvals"):
                assert attribute in cookie
            assert KEY not in signed.headers["set-cookie"]
            page = await client.get(str(web.url))
            assert page.status_code == 200
            assert "default-src 'none'" in page.headers["content-security-policy"]
            for text in (
                "send_email",
                "jane@example.com",
                "Your refund",
                "OPS-7",
                "nightly-42",
                "web-console",
            ):
                assert text in page.text
            assert f'id="req-{request.id}"' in page.text
            for asset, kind in (("console.css", "text/css"), ("console.js", "text/javascript")):
                served = await client.get(f"{web.url}/static/{asset}")
                assert served.status_code == 200 and served.headers["content-type"].startswith(kind)
            await hl.decide(request.id, True, by="test", via="api")
    assert refusals(logs) == [(401, "no session")]
    assert all(KEY not in json.dumps(entry, default=str) for entry in logs)


async def test_every_bad_request_is_a_logged_4xx_and_the_request_stays_pending() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        @hl.require_approval(approvers=["bob"])
        async def bobs_tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(tool)
            tg.start_soon(bobs_tool)
            pending = await wait_for_pending(hl, 2, within=5)
            mine = next(r for r in pending if r.function == "tool")
            bobs = next(r for r in pending if r.function == "bobs_tool")
            url = f"{web.url}/requests/{mine.id}"
            with capture_logs() as logs:
                anonymous = await client.post(url, data={"action": "approve"})
                wrong = await client.get(f"{web.url}?code=not-a-code-at-all")
                csrf = await signed_in(client, web)
                good = {"csrf": csrf, "action": "approve"}
                no_csrf = await client.post(url, data={"action": "approve"})
                bad_csrf = await client.post(url, data={**good, "csrf": "forged"})
                other_origin = await client.post(url, data=good, headers={"origin": "http://evil.example"})
                cross_site = await client.post(url, data=good, headers={"sec-fetch-site": "same-site"})
                json_body = await client.post(url, json=good, headers={"x-csrf-token": csrf})
                bad_bytes = await client.post(
                    url,
                    content=b"action=approve&csrf=" + csrf.encode() + b"&comment=%FF%FE",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                repeated = await client.post(
                    url,
                    content=f"csrf={csrf}&action=approve&action=deny",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                bad_action = await client.post(url, data={**good, "action": "maybe"})
                empty_answer = await client.post(url, data={**good, "action": "answer"})
                unknown = await client.post(f"{web.url}/requests/{'0' * 32}", data=good)
                odd_id = await client.post(f"{web.url}/requests/..%2f..", data=good)
                not_approver = await client.post(f"{web.url}/requests/{bobs.id}", data=good)
                wrong_method = await client.put(url)
                no_asset = await client.get(f"{web.url}/static/secrets.txt")
                no_page = await client.get(f"{web.url}/admin")
            statuses = [
                r.status_code
                for r in (
                    anonymous,
                    wrong,
                    no_csrf,
                    bad_csrf,
                    other_origin,
                    cross_site,
                    json_body,
                    bad_bytes,
                    repeated,
                    bad_action,
                    empty_answer,
                    unknown,
                    odd_id,
                    not_approver,
                    wrong_method,
                    no_asset,
                    no_page,
                )
            ]
            assert statuses == [
                401,
                401,
                403,
                403,
                403,
                403,
                415,
                400,
                400,
                400,
                400,
                404,
                404,
                403,
                405,
                404,
                404,
            ]
            assert {r.id for r in await hl.pending()} == {mine.id, bobs.id}
            tg.cancel_scope.cancel()
    logged = refusals(logs)
    assert len(logged) == 17
    assert (403, "cross-origin request") in logged and (403, "cross-site request") in logged
    assert (403, "not an approver") in logged and (401, "forged sign-in code") in logged
    assert all("not-a-code-at-all" not in json.dumps(entry, default=str) for entry in logs)


async def test_a_late_decision_gets_already_decided_by_whom() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(tool)
            [request] = await wait_for_pending(hl, within=5)
            csrf = await signed_in(client, web)
            await hl.decide(request.id, True, by="U024", via="slack")
            late = await client.post(
                f"{web.url}/requests/{request.id}",
                data={"action": "deny", "comment": "too late"},
                headers={"accept": "application/json", "x-csrf-token": csrf},
            )
    assert late.status_code == 409
    assert late.json()["status"] == "approved"
    assert late.json()["message"].startswith("already approved by U024 via slack")


async def test_an_answer_that_did_not_stand_is_told_so_even_when_it_was_the_same_person() -> None:
    # The same person's earlier answer from another tab was stored between reading the
    # request and deciding it: by and via are theirs, yet this answer is not the one that stands.
    request = make_request("c" * 32, approvers=())
    first = Decision(request.id, True, Status.APPROVED, "web-console", "web", None, datetime.now(UTC))
    decider = LateDecider(request, first)
    web = WebChannel(token=KEY)
    async with anyio.create_task_group() as tg:
        await tg.start(web.run, decider)
        async with serving(web.routes()) as client:
            assert (await client.get(web.login_url(str(client.base_url)))).status_code == 303
            csrf = csrf_of((await client.get("/approvals")).text)
            with capture_logs() as logs:
                late = await client.post(
                    f"/approvals/requests/{request.id}",
                    data={"action": "deny", "comment": "second tab"},
                    headers={"accept": "application/json", "x-csrf-token": csrf},
                )
        tg.cancel_scope.cancel()
    assert decider.answers == [(request.id, "web-console", "web")]
    assert late.status_code == 409
    body = late.json()
    assert (body["status"], body["mine"]) == ("approved", False)
    assert body["message"].startswith("already approved by web-console via web")
    assert [entry["event"] for entry in logs if entry["event"].startswith(("web.", "listener."))] == [
        "web.already_decided"
    ]


async def test_non_loopback_clients_are_refused_unless_allowed() -> None:
    for allow_remote, expected in ((False, 403), (True, 303)):
        web = WebChannel(token=KEY, allow_remote=allow_remote)
        async with HumanLayer([web], listen=None) as hl:
            with capture_logs() as logs:
                for client_address, status in (
                    (("203.0.113.7", 40000), expected),
                    (("::ffff:127.0.0.1", 1), 303),
                ):
                    transport = httpx.ASGITransport(app=hl.asgi_app, client=client_address)
                    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
                        response = await client.get(web.login_url("http://console"))
                        assert response.status_code == status, (allow_remote, client_address)
        assert refusals(logs) == ([] if allow_remote else [(403, "not a loopback client")])


async def test_named_users_decide_by_name_and_keys_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    web = WebChannel(users={"alice": ALICE, "bob": "bob-key-0123456789ab"})
    assert "alice" in repr(web) and ALICE not in repr(web)
    assert web.users == ("alice", "bob")
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvers=["alice"])
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            results: list[str] = []

            async def call() -> None:
                results.append(await tool())

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            csrf = await signed_in(client, web, user="alice")
            response = await client.post(
                f"{web.url}/requests/{request.id}", data={"csrf": csrf, "action": "approve", "comment": "ok"}
            )
            assert response.status_code == 303
        assert results == ["ran"]
        decided = await hl.get(request.id)
        assert decided.decision is not None
        assert (decided.decision.by, decided.decision.via, decided.decision.comment) == ("alice", "web", "ok")
    monkeypatch.setenv("HUMANLAYER_WEB_TOKEN", KEY)
    link = WebChannel().login_url("http://h")
    assert link.startswith("http://h/approvals?code=") and KEY not in link
    monkeypatch.setenv("HUMANLAYER_WEB_TOKEN", "short")
    with pytest.raises(ConfigurationError) as short:
        WebChannel()
    assert "short" not in str(short.value).replace("$HUMANLAYER_WEB_TOKEN", "")
    with pytest.raises(ConfigurationError, match="same key"):
        WebChannel(users={"a": ALICE, "b": ALICE})
    with pytest.raises(ConfigurationError, match="base_path"):
        WebChannel(token=KEY, base_path="approvals?x")


async def test_users_given_an_email_are_one_principal_with_their_email_everywhere() -> None:
    bob_key = "bob-key-0123456789ab"
    web = WebChannel(users={"alice": ALICE, "bob": bob_key}, emails={"alice": "Alice@Company.com"})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

        @hl.require_approval(approvers=["alice@company.com"])
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            [request] = await wait_for_pending(hl, within=5)
            for key, status in ((bob_key, 403), (ALICE, 200)):
                response = await client.post(
                    f"{web.url}/requests/{request.id}",
                    data={"action": "approve"},
                    headers={"authorization": f"Bearer {key}", "accept": "application/json"},
                )
                assert response.status_code == status, response.text
        decided = (await hl.get(request.id)).decision
        assert decided is not None and (decided.by, decided.user, decided.via) == (
            "alice@company.com",
            "alice",
            "web",
        )
    with pytest.raises(ConfigurationError, match="'carol'"):
        WebChannel(users={"alice": ALICE}, emails={"carol": "carol@company.com"})
    with pytest.raises(ConfigurationError, match="address"):
        WebChannel(users={"alice": ALICE}, emails={"alice": "alice"})


def cookie_of(response: httpx.Response) -> str:
    match = re.search(r"humanlayer_session=([^;]+)", response.headers.get("set-cookie", ""))
    assert match is not None
    return match.group(1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def session_cookie(value: str) -> dict[str, str]:
    """The header a browser holding the session cookie ``value`` sends."""
    return {"cookie": f"humanlayer_session={value}"}


def code_of(link: str) -> str:
    return link.partition("?code=")[2]


async def test_a_sign_in_code_works_once_and_expired_or_forged_codes_are_refused() -> None:
    web = WebChannel(token=KEY)
    other = WebChannel(token="another-key-0123456789")
    async with HumanLayer([web], listen="127.0.0.1:0"):
        link = web.login_url()
        code = code_of(link)
        signed, _, mac = code.rpartition(".")
        tampered = f"{signed}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
        nested = f"{b64(b'web-console')}.{b64(b'[' * 5_000)}.{mac}"  # parsed, it would overflow
        expired = web._credentials.code("web-console", -60)  # signed, but a minute past its expiry
        async with httpx.AsyncClient() as client:
            with capture_logs() as logs:
                first = await client.get(link)
                client.cookies.clear()
                again = await client.get(link)
                outcomes = [
                    await client.get(f"{web.url}?code={value}")
                    for value in (
                        expired,
                        tampered,
                        nested,
                        code_of(other.login_url("http://x")),
                        "abc",
                        "a.b.c",
                    )
                ]
                assert not client.cookies
                page = await client.get(str(web.url))
    assert first.status_code == 303 and cookie_of(first)
    assert again.status_code == 401 and "This sign-in link is not valid" in again.text
    assert 'action="/approvals/sign-in"' in again.text  # the way to sign in instead
    assert [r.status_code for r in outcomes] == [401] * 6
    assert page.status_code == 401
    assert refusals(logs) == [
        (401, "used sign-in code"),
        (401, "expired sign-in code"),
        *[(401, "forged sign-in code")] * 5,
        (401, "no session"),
    ]
    assert all(code not in json.dumps(entry, default=str) for entry in logs)


async def test_two_consoles_sharing_a_store_accept_each_others_codes_exactly_once(store_url: str) -> None:
    webs = [WebChannel(token=KEY), WebChannel(token=KEY)]
    async with (
        HumanLayer([webs[0]], store=store_from_url(store_url), listen="127.0.0.1:0"),
        HumanLayer([webs[1]], store=store_from_url(store_url), listen="127.0.0.1:0"),
        httpx.AsyncClient() as client,
    ):
        statuses = []
        for minter, first, second in ((0, 1, 0), (1, 0, 1)):
            code = code_of(webs[minter].login_url())
            for server in (first, second):
                client.cookies.clear()
                statuses.append((await client.get(f"{webs[server].url}?code={code}")).status_code)
        # The session cookie one process set is honoured by the other: nothing is kept per process.
        client.cookies.clear()
        signed = await client.get(webs[0].login_url())
        client.cookies.clear()
        page = await client.get(str(webs[1].url), headers=session_cookie(cookie_of(signed)))
    assert statuses == [303, 401, 303, 401]
    assert page.status_code == 200 and "web-console" in page.text


async def test_a_forged_altered_or_expired_session_cookie_is_refused() -> None:
    web = WebChannel(users={"alice": ALICE, "bob": "bob-key-0123456789ab"})
    stranger = WebChannel(users={"bob": "not-bobs-key-0123456789"})
    async with HumanLayer([web], listen="127.0.0.1:0"), httpx.AsyncClient() as client:
        alices = cookie_of(await client.get(web.login_url(user="alice")))
        client.cookies.clear()
        name, fields, mac = alices.split(".")
        forged = [
            f"{b64(b'bob')}.{fields}.{mac}",  # alice's signature over bob's name
            f"{name}.{fields}.{mac[::-1]}",
            stranger._credentials.session("bob", 3600),  # signed with another key for bob
            web._credentials.session("alice", -1),  # signed, but expired
            "garbage",
        ]
        with capture_logs() as logs:
            good = await client.get(str(web.url), headers=session_cookie(alices))
            bad = [await client.get(str(web.url), headers=session_cookie(value)) for value in forged]
    assert good.status_code == 200 and "<strong>alice</strong>" in good.text
    assert [r.status_code for r in bad] == [401] * 5
    assert all("Sign in" in r.text and "<strong>" not in r.text for r in bad)
    assert refusals(logs) == [(401, "invalid session")] * 5


async def test_the_token_is_refused_in_a_url_and_taken_in_the_posted_form_or_a_header() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(tool)
            [request] = await wait_for_pending(hl, within=5)
            origin = str(web.url).removesuffix("/approvals")
            form = f"{web.url}/sign-in"
            with capture_logs() as logs:
                in_url = await client.get(f"{web.url}?token={KEY}")
                in_url_elsewhere = await client.get(f"{web.url}/events?token={KEY}")
                no_origin = await client.post(form, data={"token": KEY})
                cross = await client.post(
                    form, data={"token": KEY}, headers={"origin": "http://evil.example"}
                )
                wrong = await client.post(form, data={"token": "w" * 20}, headers={"origin": origin})
                assert not client.cookies
                signed = await client.post(form, data={"token": KEY}, headers={"origin": origin})
                assert (await client.get(str(web.url))).status_code == 200
                client.cookies.clear()
                bearer = {"authorization": f"Bearer {KEY}"}
                by_header = await client.get(str(web.url), headers=bearer)
                wrong_header = await client.get(str(web.url), headers={"authorization": "Bearer nope"})
                # A script with the header needs no CSRF token: browsers never add the header themselves.
                decided = await client.post(
                    f"{web.url}/requests/{request.id}", data={"action": "approve"}, headers=bearer
                )
    assert in_url.status_code == 400 and in_url_elsewhere.status_code == 400
    assert "Keys never go in a URL" in in_url.text and 'action="/approvals/sign-in"' in in_url.text
    assert "set-cookie" not in in_url.headers
    assert (no_origin.status_code, cross.status_code, wrong.status_code) == (403, 403, 401)
    assert "Wrong key" in wrong.text
    assert signed.status_code == 303 and signed.headers["location"] == "/approvals" and cookie_of(signed)
    assert by_header.status_code == 200 and "web-console" in by_header.text
    assert wrong_header.status_code == 401 and decided.status_code == 303
    outcome = await hl.get(request.id)
    assert outcome.decision is not None and (outcome.decision.by, outcome.decision.via) == (
        "web-console",
        "web",
    )
    assert refusals(logs) == [
        (400, "token in URL"),
        (400, "token in URL"),
        (403, "no origin"),
        (403, "cross-origin request"),
        (401, "wrong token"),
        (401, "wrong token"),
    ]
    assert all(KEY not in json.dumps(entry, default=str) for entry in logs)


async def test_the_detail_view_needs_a_session_and_unknown_ids_get_a_404_page() -> None:
    web = WebChannel(users={"alice": ALICE, "bob": "bob-key-0123456789ab"})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvers=["alice"])
        async def tool(n: int) -> int:
            return n

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(tool, 7)
            [request] = await wait_for_pending(hl, within=5)
            url = f"{web.url}/requests/{request.id}"
            with capture_logs() as logs:
                anonymous = await client.get(url)
                await signed_in(client, web, user="bob")
                bobs = await client.get(url)
                client.cookies.clear()
                await signed_in(client, web, user="alice")
                alices = await client.get(url)
                unknown = await client.get(f"{web.url}/requests/{'0' * 32}")
                odd = await client.get(f"{web.url}/requests/not%20an%20id")
                await hl.decide(request.id, True, by="alice", via="api")
                decided = await client.get(url)
    assert anonymous.status_code == 401 and 'action="/approvals/sign-in"' in anonymous.text
    assert (
        bobs.status_code == 200
        and "bob is not an approver" in bobs.text
        and "Approve</button>" not in bobs.text
    )
    assert alices.status_code == 200 and "Approve</button>" in alices.text
    assert f"tool  (request {request.id})" in alices.text and "n = 7" in alices.text
    assert "default-src 'none'" in alices.headers["content-security-policy"]
    assert (unknown.status_code, odd.status_code) == (404, 404)
    assert "No such request" in unknown.text and unknown.headers["content-type"].startswith("text/html")
    assert decided.status_code == 200 and "approved by alice via api" in decided.text
    assert "Approve</button>" not in decided.text
    assert refusals(logs) == [(401, "no session"), (404, "unknown request"), (404, "unknown request")]


def test_the_full_view_counts_long_runs_of_spaces_and_keeps_indentation() -> None:
    request = make_request(
        "f" * 32,
        kwargs={
            "short": "x" + " " * 7 + "y",
            "long": "x" + " " * 8 + "y",
            "wide": "\u3000" * 9 + "z",  # ideographic spaces are as wide, and as blank
            "fake": '<span class="spaces">⟨0 spaces⟩</span>',
        },
        doc="Tool.\n" + " " * 38 + "indented\n" + " " * 41 + "pushed",
    )
    html = _web_page.detail_page(
        request, user="u", csrf="c", base="/approvals", action="/a", may_decide=False
    )
    full = html[html.index('<pre class="full">') : html.index("</pre>")]
    assert "&quot;x       y&quot;" in full  # seven spaces: as they are
    assert '&quot;x<span class="spaces" title="8 spaces">⟨8 spaces⟩</span>y&quot;' in full
    assert "⟨9 spaces⟩</span>z" in full
    assert "\n" + " " * 40 + "indented" in full  # indentation (two, then 38): as it is
    assert '\n<span class="spaces" title="43 spaces">⟨43 spaces⟩</span>pushed' in full
    assert "&lt;span class=\\&quot;spaces\\&quot;&gt;⟨0 spaces⟩&lt;/span&gt;" in full  # escaped first
    assert "\n  short = &quot;x" in full and "\n  fake = &quot;&lt;span" in full


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, str]]]:
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, json.loads(line.removeprefix("data: "))


async def test_events_stream_new_requests_and_any_channels_decisions_then_end_cleanly() -> None:
    web = WebChannel(token=KEY)
    hl = HumanLayer([web], listen="127.0.0.1:0")
    await hl.__aenter__()

    @hl.require_approval()
    async def tool(n: int) -> int:
        return n

    seen: list[tuple[str, dict[str, str]]] = []
    ended = anyio.Event()
    async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
        await signed_in(client, web)

        async def follow() -> None:
            async with client.stream("GET", f"{web.url}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for event in sse_events(response):
                    seen.append(event)
            ended.set()  # reached only when the server finished the response cleanly

        async def call() -> None:
            assert await tool(7) == 7

        tg.start_soon(follow)
        with anyio.fail_after(10):
            while not seen:
                await anyio.sleep(0.01)
        assert seen[0][0] == "snapshot" and seen[0][1]["pending"] == ""
        tg.start_soon(call)
        [request] = await wait_for_pending(hl, within=5)
        with anyio.fail_after(10):
            while [kind for kind, _ in seen] != ["snapshot", "requested"]:
                await anyio.sleep(0.01)
        assert f"req-{request.id}" in seen[1][1]["html"]
        await hl.decide(request.id, True, by="U024", comment="fine", via="slack")
        with anyio.fail_after(10):
            while len(seen) < 3:
                await anyio.sleep(0.01)
        kind, data = seen[2]
        assert kind == "decided" and data["id"] == request.id
        assert "approved by U024 via slack" in data["html"] and "(fine)" in data["html"]
        await hl.aclose()
        with anyio.fail_after(10):
            await ended.wait()


# -- headless Chromium ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def chromium(profile: str) -> AsyncIterator[Any]:
    """A headless Chromium (the system one on PATH) keeping its profile in ``profile``."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not on PATH (install the Debian packages chromium and chromium-driver)")
        pytest.skip("chromium is not on PATH: apt-get install chromium chromium-driver")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context
        finally:
            await context.close()


async def first_page(context: Any) -> Any:
    return context.pages[0] if context.pages else await context.new_page()


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium, with its own profile."""
    with tempfile.TemporaryDirectory() as profile:
        async with chromium(profile) as context:
            yield await first_page(context)


async def test_browser_history_holds_neither_the_token_nor_a_usable_code(tmp_path: Path) -> None:
    web = WebChannel(token=KEY)
    profile = tmp_path / "profile"
    async with HumanLayer([web], listen="127.0.0.1:0"):
        async with chromium(str(profile)) as context:
            page = await first_page(context)
            await page.goto(web.login_url())  # the link printed or shared
            assert page.url == web.url
            await page.get_by_text("Signed in as").wait_for()
            await context.clear_cookies()
            await page.goto(str(web.url))  # signed out: the sign-in form, then the key typed into it
            await page.get_by_label("Your key").fill(KEY)
            await page.get_by_role("button", name="Sign in").click()
            await page.get_by_text("Signed in as").wait_for()
            assert page.url == web.url
        # Chromium has closed, so its History database is written; read a copy (it may be locked).
        shutil.copy(profile / "Default" / "History", tmp_path / "History")
        db = sqlite3.connect(tmp_path / "History")
        try:
            urls = [url for (url,) in db.execute("SELECT url FROM urls")]
        finally:
            db.close()
        assert str(web.url) in urls  # the visits were recorded
        assert not [url for url in urls if KEY in url]
        assert KEY.encode() not in (tmp_path / "History").read_bytes()
        visited_links = [url for url in urls if "?code=" in url]
        assert visited_links  # the sign-in link is there, and spent:
        async with httpx.AsyncClient() as client:
            for url in visited_links:
                assert (await client.get(url)).status_code == 401


async def test_browser_approves_denies_and_answers_live(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ask = hl.human_as_tool()

        @hl.require_approval()
        async def send_email(to: str) -> str:
            """Send an email."""
            return f"sent to {to}"

        @hl.require_approval(condition=lambda amount, **kwargs: amount > 1000)
        async def transfer_money(amount: int) -> str:
            return f"moved {amount}"

        @hl.require_approval()
        async def purge(table: str) -> str:
            return "purged"

        results: dict[str, Any] = {}

        async def call(name: str, coro: Any) -> None:
            try:
                results[name] = await coro
            except ApprovalDenied as exc:
                results[name] = exc

        await page.goto(web.login_url())
        assert page.url == web.url  # the token is gone from the address bar
        [cookie] = await page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        await page.evaluate("window.notReloaded = true")
        await page.locator("#connection", has_text="on").wait_for()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "email", send_email("jane@example.com"))
            tg.start_soon(call, "transfer", transfer_money(10_000))
            tg.start_soon(call, "question", ask("Which region should the cluster use?"))
            tg.start_soon(call, "purge", purge("orders"))
            pending = {r.function: r for r in await wait_for_pending(hl, 4, within=5)}
            cards = page.locator("#pending > li.card")
            await cards.nth(3).wait_for()

            email = page.locator(f"#req-{pending['send_email'].id}")
            await email.get_by_text("jane@example.com").wait_for()
            await email.get_by_role("button", name="Approve", exact=True).click()

            transfer = page.locator(f"#req-{pending['transfer_money'].id}")
            await transfer.get_by_label("Comment (the reason, when denying)").fill("vendor not verified")
            # Enter in the comment box adds a line; it must not submit with the first button (Approve).
            await transfer.get_by_label("Comment (the reason, when denying)").press("Enter")
            await transfer.get_by_role("button", name="Deny").click()

            question = page.locator(f"#req-{pending['contact_human'].id}")
            await question.get_by_text("Which region should the cluster use?").wait_for()
            await question.get_by_label("Your answer").fill("eu-west-1")
            await question.get_by_label("Your answer").press("Tab")
            await page.keyboard.press("Enter")  # the keyboard reaches "Send answer"

            # A decision from another channel shows up too.
            await hl.decide(pending["purge"].id, False, by="U024", comment="not today", via="slack")
            await page.locator("#history > li").nth(3).wait_for()
        assert results["email"] == "sent to jane@example.com"
        assert isinstance(results["transfer"], ApprovalDenied)
        assert results["transfer"].decision.comment == "vendor not verified"
        assert (results["transfer"].decision.by, results["transfer"].decision.via) == ("web-console", "web")
        assert results["question"] == "eu-west-1"
        assert isinstance(results["purge"], ApprovalDenied)
        await page.locator("#pending-empty").wait_for()
        assert await cards.count() == 0
        history = await page.locator("#history").inner_text()
        assert "approved by web-console via web" in history
        assert "denied by web-console via web" in history and "vendor not verified" in history
        assert "answered by web-console via web" in history and "eu-west-1" in history
        assert "denied by U024 via slack" in history and "not today" in history
        assert await page.evaluate("window.notReloaded") is True


async def test_browser_wrong_token_and_forged_cross_site_posts_are_refused(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            [request] = await wait_for_pending(hl, within=5)
            with capture_logs() as logs:
                wrong = await page.goto(f"{web.url}?code=guessed-code-0000000000")
                assert wrong is not None and wrong.status == 401
                assert await page.context.cookies() == []
                await page.goto(web.login_url())
                await page.locator(f"#req-{request.id}").wait_for()
                # Forms that post to the console from two other origins, one cross-site
                # (no cookie is sent) and one same-site on another port (cookie sent).
                target = f"{web.url}/requests/{request.id}"
                evil = (
                    f'<form id="f" method="post" action="{target}">'
                    '<input name="action" value="approve"></form>'
                    "<script>document.getElementById('f').submit()</script>"
                )
                statuses = []
                for origin in ("http://evil.example", "http://127.0.0.1:8999"):
                    await page.route(
                        f"{origin}/**", lambda route: route.fulfill(content_type="text/html", body=evil)
                    )
                    async with page.expect_response(lambda r: "/requests/" in r.url) as posted:
                        await page.goto(f"{origin}/win-a-prize")
                    statuses.append((await posted.value).status)
            assert statuses == [401, 403]
            assert [r.id for r in await hl.pending()] == [request.id]
            tg.cancel_scope.cancel()
    assert refusals(logs) == [(401, "forged sign-in code"), (401, "no session"), (403, "cross-site request")]


async def test_browser_detail_view_shows_the_whole_call_and_the_card_says_where_it_shortened(
    browser_page: Any,
) -> None:
    page = browser_page
    web = WebChannel()
    hostile = '</dd></pre><script>window.pwned = 1</script><b id="injected">x</b>\u202eevil\u202c'
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def run_sql(rows: list[str], config: Mapping[str, object], query: str, note: str) -> str:
            return "ran"

        rows = [f"row-{n}" for n in range(1, 12)]
        config = {"a": {"b": {"c": {"d": "fourth-level-value"}}}}
        results: list[str] = []

        async def call() -> None:
            results.append(await run_sql(rows, config, " " * 1000 + "DROP TABLE users", hostile))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            await page.goto(web.login_url())
            card = page.locator(f"#req-{request.id}")
            await card.wait_for()
            shown = await card.inner_text()
            for cut in ("row-10", "… 1 more item", "nested deeper", "… 16 more characters", "shortened"):
                assert cut in shown
            for hidden in ("row-11", "fourth-level-value", "DROP TABLE"):
                assert hidden not in shown
            await card.get_by_role("link", name="Show the full call").click()
            await page.wait_for_url(f"{web.url}/requests/{request.id}")
            full = await page.locator("pre.full").inner_text()
            for whole in ('"row-11"', '"fourth-level-value"', "DROP TABLE users", "⟨1,000 spaces⟩"):
                assert whole in full
            # Nothing pushes the statement out of sight: it is drawn inside the window.
            box = await page.evaluate(
                """() => {
                    const full = document.querySelector("pre.full");
                    const walker = document.createTreeWalker(full, NodeFilter.SHOW_TEXT);
                    while (walker.nextNode()) {
                        const at = walker.currentNode.data.indexOf("DROP TABLE");
                        if (at < 0) continue;
                        const range = document.createRange();
                        range.setStart(walker.currentNode, at);
                        range.setEnd(walker.currentNode, at + 10);
                        const r = range.getBoundingClientRect();
                        return {left: r.left, right: r.right, width: window.innerWidth};
                    }
                    return null;
                }"""
            )
            assert box is not None and 0 <= box["left"] < box["right"] <= box["width"]
            # Hostile text is text: escaped, its bidi control spelled out.
            assert "<script>window.pwned = 1</script>" in full and "\\u202eevil\\u202c" in full
            assert await page.evaluate("window.pwned") is None
            assert await page.locator("#injected").count() == 0
            await page.get_by_role("button", name="Approve", exact=True).click()
            await page.wait_for_url(str(web.url))
        assert results == ["ran"]


async def read_until(stream: ByteReceiveStream, buffer: list[str], pattern: str) -> re.Match[str]:
    with anyio.fail_after(30):
        while not (match := re.search(pattern, "".join(buffer))):
            buffer.append((await stream.receive()).decode())
    return match


async def test_the_demo_answered_from_the_browser_and_the_terminal(browser_page: Any) -> None:
    page = browser_page
    command = [
        sys.executable,
        "-m",
        "humanlayer_async.cli",
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--timeout",
        "60",
    ]
    env = {**os.environ, "HUMANLAYER_WEB_TOKEN": ""}
    async with await anyio.open_process(command, env=env) as process:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        err: list[str] = []
        out: list[str] = []
        url = (await read_until(process.stderr, err, r"web console: (http://\S+\?code=\S+)")).group(1)
        ids = {}
        for function in ("send_email", "transfer_money", "delete_database_records"):
            match = await read_until(
                process.stdout, out, rf"{function}\([^\n]*\n(?:  [^\n]*\n)*?  answer: y (\w+)"
            )
            ids[function] = match.group(1)
        await page.goto(url)
        cards = page.locator("#pending > li.card")
        await cards.nth(2).wait_for()
        for function in ("send_email", "delete_database_records"):
            card = page.locator(f"#pending > li.card[data-id^='{ids[function]}']")
            await card.get_by_role("button", name="Approve", exact=True).click()
            await card.wait_for(state="detached")
        await process.stdin.send(f"n {ids['transfer_money']} vendor not verified\n".encode())
        user = getpass.getuser()
        await page.locator("#history", has_text=f"denied by {user} via console").wait_for()
        await read_until(process.stdout, out, r"summary(\n.*){7}")
        assert await process.wait() == 0
    text = "".join(out)
    assert re.search(rf"\[{ids['send_email']}\] send_email: approved by web-console via web", text)
    summary = text[text.index("summary") :]
    assert re.search(r"ran\s+send email\s+approved by web-console via web at .*, after \d", summary)
    assert re.search(r"ran\s+delete database records\s+approved by web-console via web", summary)
    assert re.search(
        rf"refused\s+transfer \$10,000\s+denied by {user} via console.*vendor not verified", summary
    )
    assert re.search(r"ran\s+transfer \$100\s+no approval needed", summary)
    assert "vendor not verified" in await page.locator("#history").inner_text()


# -- edit, then approve --------------------------------------------------------------------


class Elements(HTMLParser):
    """Every element of a page, as (tag, attributes), and each textarea's value (by name)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.textareas: dict[str, str] = {}
        self._in: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "textarea":
            self._in = dict(attrs).get("name") or ""
            self.textareas[self._in] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            text = self.textareas[self._in]
            # As browsers do, a textarea drops the line break that opens its content.
            self.textareas[self._in] = text + (data.removeprefix("\n") if not text else data)

    def named(self, name: str) -> list[tuple[str, dict[str, str | None]]]:
        return [(tag, attrs) for tag, attrs in self.elements if attrs.get("name") == name]


def edit_form(html: str) -> str:
    """The detail page's edit form, or "" when it has none."""
    start = html.find('<form class="edit"')
    return "" if start < 0 else html[start : html.index("</form>", start) + len("</form>")]


async def test_the_detail_view_offers_edits_only_on_editable_pending_requests_its_user_may_decide() -> None:
    web = WebChannel(users={"alice": ALICE, "bob": "bob-key-0123456789ab"})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(
            approvers=["alice"], editable=["amount", "currency", "api_key", "urgent"], on_reject="return"
        )
        async def transfer(
            recipient: str, amount: float, currency: Literal["EUR", "USD"], api_key: str, urgent: bool
        ) -> str:
            return "sent"

        @hl.require_approval(approvers=["alice"])
        async def fixed(amount: float) -> str:
            return "sent"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(transfer, "acme", 12000.0, "USD", "sk-live-secret", False)
            tg.start_soon(fixed, 5.0)
            pending = {r.function: r for r in await wait_for_pending(hl, 2, within=5)}
            editable, plain = pending["transfer"], pending["fixed"]
            await signed_in(client, web, user="bob")
            bobs = await client.get(f"{web.url}/requests/{editable.id}")
            client.cookies.clear()
            await signed_in(client, web, user="alice")
            console = (await client.get(str(web.url))).text
            alices = await client.get(f"{web.url}/requests/{editable.id}")
            fixed_view = await client.get(f"{web.url}/requests/{plain.id}")
            await hl.decide(editable.id, False, by="alice", via="api")
            decided = await client.get(f"{web.url}/requests/{editable.id}")
            tg.cancel_scope.cancel()
    form = edit_form(alices.text)
    assert (
        "Approve with these changes</button>" in form
        and f'action="/approvals/requests/{editable.id}"' in form
    )
    page = Elements(form)
    assert page.textareas["edit.amount"] == "12000.0"  # the current value, as JSON (the browser drops "\n")
    [(tag, _)] = page.named("edit.currency")
    assert tag == "select"
    options = [(a["value"], "selected" in a) for t, a in page.elements if t == "option"]
    assert options[:2] == [("EUR", False), ("USD", True)] and options[2:] == [
        ("true", False),
        ("false", True),
    ]
    # The masked key is shown, and cannot be sent: no field carries its name.
    assert page.named("edit.api_key") == [] and 'value="***" disabled' in form
    assert "masked: it cannot be edited" in form and "sk-live-secret" not in alices.text
    assert page.named("edit.recipient") == []  # not editable
    assert page.named("csrf") and "Approve</button>" in alices.text  # approving as it is stays
    assert f'href="/approvals/requests/{editable.id}#edit">Edit, then approve' in console
    assert f'href="/approvals/requests/{plain.id}#edit"' not in console
    for refused in (bobs, fixed_view, decided):
        assert refused.status_code == 200 and edit_form(refused.text) == ""
    assert "bob is not an approver" in bobs.text and "denied by alice via api" in decided.text


async def test_an_edit_from_the_form_or_a_script_runs_the_tool_and_unchanged_fields_are_not_edits() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ran: list[tuple[str, float, str | None, list[str]]] = []

        @hl.require_approval(editable=True)
        async def transfer(recipient: str, amount: float, memo: str | None, tags: list[str]) -> str:
            ran.append((recipient, amount, memo, tags))
            return f"sent {amount}"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(transfer, "acme", 12000.0, None, ["q3", "café"])
            tg.start_soon(transfer, "globex", 300.0, "as agreed", [])
            pending = {r.kwargs["recipient"]: r for r in await wait_for_pending(hl, 2, within=5)}
            first, second = pending["acme"], pending["globex"]
            csrf = await signed_in(client, web)
            shown = Elements(edit_form((await client.get(f"{web.url}/requests/{first.id}")).text)).textareas
            assert shown["edit.memo"] == "null" and shown["edit.tags"] == '[\n  "q3",\n  "café"\n]'
            # The form as a browser sends it: every field, the untouched ones as shown (a
            # textarea's lines end in CRLF), and one changed.
            form = {
                "csrf": csrf,
                "action": "approve",
                "comment": "split it",
                "edit.recipient": shown["edit.recipient"],
                "edit.amount": "5000",
                "edit.memo": shown["edit.memo"],
                "edit.tags": shown["edit.tags"].replace("\n", "\r\n"),
            }
            browser = await client.post(f"{web.url}/requests/{first.id}", data=form)
            client.cookies.clear()
            # A script: the same value written otherwise ("300" for 300.0) is no edit either.
            script = await client.post(
                f"{web.url}/requests/{second.id}",
                data={"action": "approve", "edit.amount": "300", "edit.memo": "as agreed, in two parts"},
                headers={"authorization": f"Bearer {KEY}", "accept": "application/json"},
            )
        assert browser.status_code == 303 and browser.headers["location"] == "/approvals"
        assert script.status_code == 200, script.text
        assert script.json()["message"].startswith(
            "approved by web-console with memo='as agreed, in two parts' via web"
        )
        assert sorted(ran) == [
            ("acme", 5000, None, ["q3", "café"]),
            ("globex", 300.0, "as agreed, in two parts", []),
        ]
        edited = await hl.get(first.id)
        assert edited.decision is not None and edited.decision.edits == {"amount": 5000}
        assert (edited.decision.by, edited.decision.via, edited.decision.comment) == (
            "web-console",
            "web",
            "split it",
        )
        assert edited.kwargs["amount"] == 5000
        other = (await hl.get(second.id)).decision
        assert other is not None and other.edits == {"memo": "as agreed, in two parts"}


async def test_an_invalid_edit_is_a_400_naming_the_argument_and_the_request_stays_pending() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(editable=["amount", "currency", "api_key"])
        async def pay(recipient: str, amount: float, currency: Literal["EUR", "USD"], api_key: str) -> str:
            return "paid"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(pay, "acme", 10.0, "EUR", "sk-live-secret")
            [request] = await wait_for_pending(hl, within=5)
            url = f"{web.url}/requests/{request.id}"
            script = {"authorization": f"Bearer {KEY}", "accept": "application/json"}
            with capture_logs() as logs:
                answers = [
                    await client.post(url, data={"action": "approve", f"edit.{name}": value}, headers=script)
                    for name, value in (
                        ("amount", "lots"),
                        ("currency", "BTC"),
                        ("recipient", "mallory"),
                        ("api_key", "sk-live-mine"),
                        ("<script>", "x"),
                    )
                ]
                denial = await client.post(url, data={"action": "deny", "edit.amount": "1"}, headers=script)
                answer = await client.post(
                    url, data={"action": "answer", "answer": "yes", "edit.amount": "1"}, headers=script
                )
                unnamed = await client.post(url, data={"action": "approve", "edit.": "1"}, headers=script)
                csrf = await signed_in(client, web)
                page = await client.post(url, data={"csrf": csrf, "action": "approve", "edit.amount": "lots"})
                hostile = await client.post(
                    url, data={"csrf": csrf, "action": "approve", "edit.<script>alert(1)</script>": "1"}
                )
                forged = await client.post(url, data={"action": "approve", "edit.amount": "5"})
                cross = await client.post(
                    url,
                    data={"csrf": csrf, "action": "approve", "edit.amount": "5"},
                    headers={"origin": "http://evil.example"},
                )
                many = {f"edit.a{n}": "1" for n in range(51)}
                too_many = await client.post(url, data={"csrf": csrf, "action": "approve", **many})
                too_long = await client.post(
                    url, data={"csrf": csrf, "action": "approve", "edit.amount": "9" * 10001}
                )
            assert [r.status_code for r in answers] == [400] * 5
            bodies = [r.json() for r in answers]
            assert [b["argument"] for b in bodies] == [
                "amount",
                "currency",
                "recipient",
                "api_key",
                "<script>",
            ]
            for body, problem in zip(
                bodies,
                ("must be a number", "must be one of", "not an editable", "masked", "not an editable"),
                strict=True,
            ):
                assert problem in body["error"], body
            assert denial.status_code == 400 and "not a denial" in denial.json()["error"]
            assert answer.status_code == 400 and answer.json()["argument"] == ""
            assert unnamed.status_code == 400 and "edit.<argument>" in unnamed.text
            assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
            assert "argument &#x27;amount&#x27;: must be a number" in page.text
            assert "still pending" in page.text and f'href="/approvals/requests/{request.id}"' in page.text
            assert hostile.status_code == 400 and "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text
            assert "<script>" not in hostile.text
            assert (forged.status_code, cross.status_code) == (403, 403)
            assert (too_many.status_code, too_long.status_code) == (400, 400)
            still = await hl.get(request.id)
            assert still.status is Status.PENDING and still.kwargs["amount"] == 10.0
            tg.cancel_scope.cancel()
    assert refusals(logs) == [
        *[(400, "invalid edit")] * 7,
        (400, "bad edit field"),
        (400, "invalid edit"),
        (400, "invalid edit"),
        (403, "bad csrf token"),
        (403, "cross-origin request"),
        (400, "too many edits"),
        (400, "field too long"),
    ]
    named = [e["argument"] for e in logs if e["event"] == "listener.refused" and "argument" in e]
    assert named[:5] == ["amount", "currency", "recipient", "api_key", "<script>"]


def test_hostile_argument_names_and_values_in_the_edit_form_are_inert() -> None:
    name = '"><script>alert(1)</script>'
    value = '</textarea><script>alert(2)</script>" onfocus="alert(3)'
    choice = '</option></select><img src=x onerror="alert(4)">'
    request = make_request(
        "e" * 32,
        approvers=(),
        kwargs={name: value, "mode": choice, "amount": 5},
        editable={
            name: {"type": "string"},
            "mode": {"enum": [choice, "safe"]},
            "amount": {"type": "integer"},
        },
    )
    html = _web_page.detail_page(
        request, user="u", csrf='c"><b>', base="/approvals", action="/approvals/requests/x", may_decide=True
    )
    page = Elements(edit_form(html))
    assert {tag for tag, _ in page.elements} <= {
        "form",
        "h2",
        "p",
        "code",
        "input",
        "div",
        "label",
        "textarea",
        "select",
        "option",
        "button",
    }
    assert page.textareas[f"edit.{name}"] == value  # the value, exactly, as text
    [(_, select)] = page.named("edit.mode")
    assert [a["value"] for t, a in page.elements if t == "option"] == [choice, "safe"]
    assert select["id"] and [a["value"] for t, a in page.named("csrf")] == ['c"><b>']
    assert (
        '<label for="e-eeeeeeee' in html and "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</label>" in html
    )
    for raw in ("<script>", "<img", 'onfocus="alert', "<b>"):
        assert raw not in html


@pytest.mark.parametrize(
    ("value", "schema", "text"),
    [
        ("hello", {"type": "string"}, "hello"),
        ("5000", {"type": "string"}, "5000"),  # text stays text: parse_edit keeps it a string
        ("line one\nline two", {"type": "string"}, "line one\nline two"),
        ('"quoted"', {"type": "string"}, '"\\"quoted\\""'),  # as text, it would lose its quotes
        ("null", {"anyOf": [{"type": "string"}, {"type": "null"}]}, '"null"'),
        ("a\u202eb", {"type": "string"}, '"a\\u202eb"'),  # bidi spelled out, still the same string
        (12000.0, {"type": "number"}, "12000.0"),
        (["café"], {"type": "array", "items": {"type": "string"}}, '[\n  "café"\n]'),
        (
            {"k": "\u202e"},
            {"type": "object", "additionalProperties": {"type": "string"}},
            '{\n  "k": "\\u202e"\n}',
        ),
        ("1", {"enum": ["1", 1]}, '"1"'),
        (1, {"enum": ["1", 1]}, "1"),
    ],
)
def test_the_edit_form_shows_each_value_so_that_it_reads_back_as_itself(
    value: Any, schema: dict[str, Any], text: str
) -> None:
    from humanlayer_async._edits import edit_text, parse_edit

    assert edit_text(value, schema) == text
    back = parse_edit(text, schema)
    assert back == value and type(back) is type(value)


async def test_browser_edits_an_amount_and_approves_and_the_tool_runs_with_it(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    note = '</textarea><b id="injected">x</b>" autofocus onfocus="window.pwned = 1'
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ran: list[tuple[str, int, str]] = []

        @hl.require_approval(editable=["amount", "note"])
        async def transfer_money(recipient: str, amount: int, note: str) -> str:
            ran.append((recipient, amount, note))
            return f"moved {amount}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer_money, "acme", 10_000, note)
            [request] = await wait_for_pending(hl, within=5)
            await page.goto(web.login_url())
            card = page.locator(f"#req-{request.id}")
            await card.get_by_role("link", name="Edit, then approve").click()
            await page.wait_for_url(f"{web.url}/requests/{request.id}#edit")
            amount = page.get_by_label("amount", exact=True)
            assert await amount.input_value() == "10000"
            # The hostile note is the box's text, exactly; nothing of it became markup.
            assert await page.get_by_label("note", exact=True).input_value() == note
            assert await page.locator("#injected").count() == 0
            assert await page.evaluate("window.pwned") is None
            await amount.fill("2500")
            await amount.press("Enter")  # a line break in the box, not an approval
            assert ran == [] and await amount.input_value() == "2500\n"
            await amount.fill("2500")
            await page.get_by_role("button", name="Approve with these changes").click()
            await page.wait_for_url(str(web.url))
            await page.locator(
                "#history", has_text="approved by web-console with amount=2500 via web"
            ).wait_for()
        assert ran == [("acme", 2500, note)]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and decision.edits == {"amount": 2500}


# -- batch decisions -----------------------------------------------------------------------


def batch_values(html: str) -> list[str]:
    """What the console's page offers to decide at once, as its cards' checkboxes post it: each
    request's id and, after a space, the fingerprint of the call as the card shows it."""
    return [
        str(attrs["value"])
        for tag, attrs in Elements(html).named("id")
        if tag == "input" and attrs.get("type") == "checkbox" and attrs.get("form") == "batch"
    ]


def batch_boxes(html: str) -> list[str]:
    """The request ids the console's page offers to decide at once."""
    return [value.split()[0] for value in batch_values(html)]


async def test_a_batch_decides_exactly_the_requests_sent_each_with_its_own_audit_entry() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        outcomes: dict[int, object] = {}

        @hl.require_approval()
        async def refund(n: int) -> int:
            return n

        async def call(n: int) -> None:
            try:
                outcomes[n] = await refund(n)
            except ApprovalDenied as exc:
                outcomes[n] = exc

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            with hl.run("nightly-7"):
                for n in (1, 2, 3):
                    tg.start_soon(call, n)
            listed = await wait_for_pending(hl, 3, within=5)
            csrf = await signed_in(client, web)
            page = (await client.get(str(web.url))).text
            chosen = batch_boxes(page)
            tg.start_soon(call, 4)  # arrives after the page was read: not among the ids sent
            [late] = [r for r in await wait_for_pending(hl, 4, within=5) if r.kwargs["n"] == 4]
            answer = await client.post(
                f"{web.url}/batch",
                data={"csrf": csrf, "action": "approve", "comment": "refunds ok", "id": batch_values(page)},
                headers={"accept": "application/json"},
            )
            with anyio.fail_after(5):
                while len(outcomes) < 3:
                    await anyio.sleep(0.01)
            assert [r.id for r in await hl.pending()] == [late.id]
            await hl.decide(late.id, False, by="ops", comment="later", via="api")
    assert sorted(chosen) == sorted(r.id for r in listed)
    assert 'data-select="function" data-value="refund"' in page
    assert 'data-select="run" data-value="nightly-7"' in page
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [(r["id"], r["status"]) for r in results] == [(request_id, "decided") for request_id in chosen]
    assert all(r["message"].startswith("approved by web-console via web at ") for r in results)
    assert {n: outcomes[n] for n in (1, 2, 3)} == {1: 1, 2: 2, 3: 3}
    assert isinstance(outcomes[4], ApprovalDenied) and outcomes[4].decision.by == "ops"
    for request_id in chosen:
        trail = [e for e in await hl.store.history(request_id=request_id) if e.event == "approval.decided"]
        assert [(e.fields["by"], e.fields["via"], e.fields["comment"]) for e in trail] == [
            ("web-console", "web", "refunds ok")
        ]


async def test_a_mixed_batch_reports_each_outcome_and_decides_only_what_it_may() -> None:
    bob_key = "bob-key-0123456789ab"
    web = WebChannel(users={"alice": ALICE, "bob": bob_key})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ask = hl.human_as_tool()

        @hl.require_approval(approvers=["alice", "bob"])
        async def shared(n: int) -> int:
            return n

        @hl.require_approval(approvers=["bob"])
        async def bobs_tool() -> str:
            return "ran"

        @hl.require_approval(approvers=["alice", "bob"], approvals=2)
        async def two_keys() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(shared, 1)
            tg.start_soon(shared, 2)
            tg.start_soon(bobs_tool)
            tg.start_soon(two_keys)
            tg.start_soon(ask, "Which region?")
            pending = await wait_for_pending(hl, 5, within=5)
            first, second = sorted(
                (r for r in pending if r.function == "shared"), key=lambda r: r.kwargs["n"]
            )
            bobs = next(r for r in pending if r.function == "bobs_tool")
            quorum = next(r for r in pending if r.function == "two_keys")
            question = next(r for r in pending if r.kind == "question")
            csrf = await signed_in(client, web, user="alice")
            page = (await client.get(str(web.url))).text
            await hl.decide(second.id, True, by="bob", via="api")  # meanwhile, by someone else
            unknown = "0" * 32
            ids = [first.id, second.id, bobs.id, quorum.id, question.id, unknown]
            with capture_logs() as logs:
                answer = await client.post(
                    f"{web.url}/batch",
                    data={"action": "approve", "id": ids},
                    headers={"authorization": f"Bearer {ALICE}", "accept": "application/json"},
                )
                as_page = await client.post(
                    f"{web.url}/batch",
                    data={"csrf": csrf, "action": "deny", "comment": "<b>not now</b>", "id": [bobs.id]},
                )
            after = {r.id: r for r in await hl.pending()}
            tg.cancel_scope.cancel()
    # Alice's page offers the approvals she may decide, and only those.
    assert sorted(batch_boxes(page)) == sorted([first.id, second.id, quorum.id])
    assert 'data-value="shared"' in page and 'data-value="bobs_tool"' not in page
    assert answer.status_code == 200, answer.text
    results = {r["id"]: r for r in answer.json()["results"]}
    assert list(results) == ids
    assert {request_id: r["status"] for request_id, r in results.items()} == {
        first.id: "decided",
        second.id: "already_decided",
        bobs.id: "not_an_approver",
        quorum.id: "counted",
        question.id: "not_decidable",
        unknown: "unknown",
    }
    assert results[first.id]["message"].startswith("approved by alice via web")
    assert results[second.id]["message"].startswith("already approved by bob via api")
    assert results[bobs.id]["message"] == "alice is not an approver of it"
    assert results[quorum.id]["message"] == "counted: 1 of 2 approvals: alice"
    assert "question" in results[question.id]["message"]
    # Only what she may decide was decided; the rest is as it was (her vote counted).
    assert set(after) == {bobs.id, quorum.id, question.id}
    assert [(v.by, v.approved) for v in after[quorum.id].votes] == [("alice", True)]
    assert (await hl.get(second.id)).decision.by == "bob"  # type: ignore[union-attr]
    assert as_page.status_code == 200 and as_page.headers["content-type"].startswith("text/html")
    assert "Denied 0 of 1 selected" in as_page.text and "alice is not an approver of it" in as_page.text
    assert f'href="/approvals/requests/{bobs.id}">bobs_tool()</a>' in as_page.text
    assert [e["request_id"] for e in logs if e["event"] == "approval.not_an_approver"] == [bobs.id, bobs.id]
    assert [(e["decided"], e["requests"]) for e in logs if e["event"] == "web.batch"] == [(1, 6), (0, 1)]


async def test_a_bad_batch_is_a_logged_4xx_that_decides_nothing() -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(editable=True)
        async def tool(n: int) -> int:
            return n

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(tool, 1)
            tg.start_soon(tool, 2)
            pending = await wait_for_pending(hl, 2, within=5)
            ids = [r.id for r in pending]
            url = f"{web.url}/batch"
            with capture_logs() as logs:
                anonymous = await client.post(url, data={"action": "approve", "id": ids})
                csrf = await signed_in(client, web)
                good = {"csrf": csrf, "action": "approve", "id": ids}
                answers = [
                    await client.post(url, data={"action": "approve", "id": ids}),
                    await client.post(url, data={**good, "csrf": "forged"}),
                    await client.post(url, data=good, headers={"origin": "http://evil.example"}),
                    await client.post(url, data=good, headers={"sec-fetch-site": "cross-site"}),
                    await client.post(url, json=good, headers={"x-csrf-token": csrf}),
                    await client.post(url, data={**good, "id": []}),
                    await client.post(url, data={**good, "id": [*ids, *(f"{n:032d}" for n in range(199))]}),
                    await client.post(url, data={**good, "id": [ids[0], "../" + ids[1]]}),
                    await client.post(url, data={**good, "id": [ids[0], ""]}),
                    await client.post(url, data={**good, "action": "answer"}),
                    await client.post(url, data={**good, "action": "deny"}),
                    await client.post(url, data={**good, "action": "deny", "comment": "   "}),
                    await client.post(url, data={**good, "edit.n": "5"}),
                    await client.post(url, data={**good, "comment": ["a", "b"]}),
                    await client.get(url),
                ]
            assert {r.id for r in await hl.pending()} == set(ids)
            tg.cancel_scope.cancel()
    assert anonymous.status_code == 401
    assert [r.status_code for r in answers] == [403, 403, 403, 403, 415, *[400] * 9, 405]
    assert answers[6].text == "at most 200 requests at once"
    assert answers[10].text == "give the reason for denying them in the comment"
    assert refusals(logs) == [
        (401, "no session"),
        (403, "bad csrf token"),
        (403, "bad csrf token"),
        (403, "cross-origin request"),
        (403, "cross-site request"),
        (415, "not a form"),
        (400, "no requests"),
        (400, "too many requests"),
        (400, "malformed request id"),
        (400, "malformed request id"),
        (400, "unknown action"),
        (400, "no reason"),
        (400, "no reason"),
        (400, "edits in a batch"),
        (400, "repeated form field"),
        (405, "method not allowed"),
    ]
    assert not [e for e in logs if e["event"] in ("approval.decided", "approval.voted", "web.batch")]


async def test_browser_selects_all_of_one_tool_and_approves_them_at_once(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ran: list[str] = []

        @hl.require_approval()
        async def send_email(to: str) -> str:
            ran.append(to)
            return f"sent to {to}"

        @hl.require_approval(on_reject="return")
        async def purge(table: str) -> str:
            ran.append(table)
            return "purged"

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_email, "ann@example.com")
            tg.start_soon(send_email, "bo@example.com")
            tg.start_soon(purge, "orders")
            first = await wait_for_pending(hl, 3, within=5)
            await page.goto(web.login_url())
            await page.locator("#connection", has_text="on").wait_for()
            batch = page.locator("#batch")
            await batch.get_by_role("button", name="Select all of send_email").click()
            await batch.get_by_text("2 selected").wait_for()
            # A request that arrives after the choice is shown, and not chosen.
            tg.start_soon(send_email, "cy@example.com")
            [late] = [
                r for r in await wait_for_pending(hl, 4, within=5) if r.kwargs.get("to") == "cy@example.com"
            ]
            late_box = page.locator(f"#req-{late.id}").get_by_role("checkbox")
            await late_box.wait_for()
            assert not await late_box.is_checked()
            await batch.get_by_role("button", name="Select all of purge").wait_for()  # shortcuts kept
            await batch.get_by_role("button", name="Approve selected").click()
            await batch.get_by_text("2 of 2 decided").wait_for()
            emails = [r for r in first if r.function == "send_email"]
            for request in emails:
                await page.locator(f"#req-{request.id}").wait_for(state="detached")
            assert sorted(ran) == ["ann@example.com", "bo@example.com"]
            purge_request = next(r for r in first if r.function == "purge")
            assert {r.id for r in await hl.pending()} == {late.id, purge_request.id}
            assert await page.locator("#pending > li.card").count() == 2
            # Denying needs a reason: the page asks for one and posts nothing.
            await page.locator(f"#req-{purge_request.id}").get_by_role("checkbox").check()
            await batch.get_by_role("button", name="Deny selected").click()
            await batch.get_by_text("give the reason for denying them").wait_for()
            assert {r.id for r in await hl.pending()} == {late.id, purge_request.id}
            history = await page.locator("#history").inner_text()
            # Without JavaScript, the ticked boxes are still the batch form's: it posts them.
            await page.route("**/static/console.js", lambda route: route.abort())
            await page.reload()
            await page.locator(f"#req-{purge_request.id}").get_by_role("checkbox").check()
            await batch.get_by_label("Comment (the reason: required to deny)").fill("not today")
            await batch.get_by_role("button", name="Deny selected").click()
            await page.get_by_role("heading", name="Denied 1 of 1 selected").wait_for()
            assert "denied by web-console via web" in await page.locator(".batch-results").inner_text()
            assert [r.id for r in await hl.pending()] == [late.id]
            tg.cancel_scope.cancel()
    assert history.count("approved by web-console via web") == 2
    assert sorted(ran) == ["ann@example.com", "bo@example.com"]


def test_hostile_tool_names_and_run_ids_in_the_batch_controls_are_inert() -> None:
    run = '"><script>alert(1)</script>\u202e'
    function = "<img src=x onerror=alert(2)>"
    request = make_request("d" * 32, approvers=(), run_id=run, function=function)
    html = _web_page.card(
        request, action="/approvals/requests/x", csrf="c", now=datetime.now(UTC), selectable=True
    ) + _web_page.selectors([request])
    page = Elements(html)
    [(_, card)] = [(tag, attrs) for tag, attrs in page.elements if tag == "li"]
    assert (card["data-function"], card["data-run"]) == (function, run)  # exact, as attribute values
    values = [
        (a["data-select"], a["data-value"]) for t, a in page.elements if t == "button" and "data-select" in a
    ]
    assert values == [("function", function), ("run", run)]
    assert "<script>" not in html and "<img" not in html
    assert "Select all of run <code>&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\\u202e</code>" in html
    unselectable = _web_page.card(request, action="/a", csrf="c", now=datetime.now(UTC))
    assert batch_boxes(unselectable) == [] and "data-run" not in unselectable


async def test_browser_redraws_a_cards_count_live_keeping_its_tick(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvals=2)
        async def failover(region: str) -> str:
            return f"failed over {region}"

        await page.goto(web.login_url())
        await page.evaluate("window.notReloaded = true")
        await page.locator("#connection", has_text="on").wait_for()
        async with anyio.create_task_group() as tg:
            tg.start_soon(failover, "eu-west-1")
            [request] = await wait_for_pending(hl)
            card = page.locator(f"#req-{request.id}")
            await card.wait_for()
            await card.get_by_role("checkbox").check()
            assert await hl.decide(request.id, True, by="ann") is None  # cast elsewhere
            await card.get_by_text("1 of 2 approvals: ann").wait_for()
            assert await card.get_by_role("checkbox").is_checked()  # the tick survives the redraw
            assert await page.evaluate("window.notReloaded") is True
            await hl.decide(request.id, True, by="ben")
            await page.locator(f"#req-{request.id}").wait_for(state="detached")
