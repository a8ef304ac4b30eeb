"""The web console's grants: "Approve, and allow the same for 1 hour", and the grants view
that lists, confirms and revokes them. Plain HTTP against the real listener, then Chromium."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from humanlayer_async import ConfigurationError, Decision, HumanLayer, current_decision
from humanlayer_async.channels import WebChannel
from humanlayer_async.channels._grant_offer import describe_duration
from humanlayer_async.stores import store_from_url
from humanlayer_async.testing import wait_for_pending

from .test_web import ALICE, KEY, refusals, signed_in
from .test_web import browser_page as browser_page  # a fixture: pytest finds it here by name

pytestmark = pytest.mark.anyio

BOB = "bob-key-0123456789ab"
CAROL = "carol-key-0123456789"
HOUR = "Approve, and allow the same for 1 hour"
_GRANT_BUTTON = re.compile(r'<button type="submit" name="grant" value="([^"]*)"[^>]*>([^<]*)</button>')


def grant_buttons(html: str) -> list[tuple[str, str]]:
    """The grant buttons of a page: (the ``grant`` value posted, the label)."""
    return _GRANT_BUTTON.findall(html)


def card_of(html: str, request_id: str) -> str:
    start = html.index(f'id="req-{request_id}"')
    return html[start : html.index("</li>", start)]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "accept": "application/json"}


def until(grant_expires_at: datetime) -> str:
    return f"until {grant_expires_at:%Y-%m-%d %H:%M:%S} UTC"


# -- configuration -------------------------------------------------------------------------


def test_grant_durations_are_offered_in_words_and_bad_ones_are_refused_by_name() -> None:
    assert WebChannel(token=KEY).grant_durations == (3600.0,)
    web = WebChannel(token=KEY, grant_durations=(timedelta(minutes=30), 8 * 3600, timedelta(days=1)))
    assert web.grant_durations == (1800.0, 28800.0, 86400.0)
    worded = [describe_duration(s) for s in (*web.grant_durations, 5400, 3600, 1, 0.5)]
    assert worded == ["30 minutes", "8 hours", "1 day", "90 minutes", "1 hour", "1 second", "0.5 seconds"]
    assert WebChannel(token=KEY, grant_durations=()).grant_durations == ()
    for bad, named in (
        ((0,), "not 0"),
        ((-60,), "not -60"),
        ((math.inf,), "not inf"),
        ((math.nan,), "not nan"),
        ((timedelta(0),), "not datetime.timedelta(0)"),
        (("1h",), "not '1h'"),
        ((True,), "not True"),
        ((60, 120, 180, 240), "at most 3 durations, not 4"),
        ((3600, timedelta(hours=1)), "offers datetime.timedelta(seconds=3600) (1 hour) twice"),
        (3600, "not 3600"),
        ("3600", "not '3600'"),
    ):
        with pytest.raises(ConfigurationError, match=re.escape(named)):
            WebChannel(token=KEY, grant_durations=bad)  # type: ignore[arg-type]


# -- the grant button ----------------------------------------------------------------------


async def test_the_grant_button_approves_then_the_same_call_runs_without_asking_and_others_still_ask() -> (
    None
):
    web = WebChannel(token=KEY, grant_durations=(timedelta(minutes=30), 3600))
    decisions: list[Decision | None] = []
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def send_email(to: str, subject: str) -> str:
            decisions.append(current_decision())
            return f"sent to {to}"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(send_email, "jane@example.com", "Your refund")
            [request] = await wait_for_pending(hl, within=5)
            csrf = await signed_in(client, web)
            page = (await client.get(str(web.url))).text
            offered = [("1800", "Approve, and allow the same for 30 minutes"), ("3600", HOUR)]
            assert grant_buttons(card_of(page, request.id)) == offered
            assert 'href="/approvals/grants"' in page  # the way to the grants view
            detail = await client.get(f"{web.url}/requests/{request.id}")
            assert grant_buttons(detail.text) == offered
            assert "every argument equal" in detail.text

            before = datetime.now(UTC)
            # A form posted without JavaScript: the button's own field, no action (it approves).
            answer = await client.post(
                f"{web.url}/requests/{request.id}", data={"csrf": csrf, "grant": "3600"}
            )
            after = datetime.now(UTC)
            assert answer.status_code == 200, answer.text
            [grant] = await hl.grants()
            assert grant.function.endswith("send_email") and grant.by == ("web-console",)
            assert grant.where == {"to": "jane@example.com", "subject": "Your refund"}
            assert before + timedelta(hours=1) <= grant.expires_at <= after + timedelta(hours=1)
            assert f"allowed the same for 1 hour, {until(grant.expires_at)}" in answer.text
            assert 'href="/approvals/grants"' in answer.text

            with anyio.fail_after(5):  # the same call: nobody is asked
                assert await send_email("jane@example.com", "Your refund") == "sent to jane@example.com"
            first, second = decisions
            assert first is not None and (first.via, first.grant) == ("web", None)
            assert second is not None and (second.via, second.grant) == ("grant", grant.id)
            assert second.by == "web-console"
            assert await hl.pending() == []

            tg.start_soon(send_email, "jane@example.com", "Something else")
            [other] = await wait_for_pending(hl, within=5)  # another call asks as ever
            assert other.kwargs["subject"] == "Something else"
            tg.cancel_scope.cancel()


async def test_a_script_gets_the_grant_in_json_and_a_quorum_grants_only_when_every_approver_asks() -> None:
    web = WebChannel(users={"alice": ALICE, "bob": BOB})
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvals=2)
        async def failover(region: str) -> str:
            return f"failed over {region}"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(failover, "eu-west-1")
            [both] = await wait_for_pending(hl, within=5)
            tg.start_soon(failover, "us-east-1")
            pending = await wait_for_pending(hl, 2, within=5)
            [one] = [r for r in pending if r.id != both.id]
            card = (await client.get(str(web.url), headers={"authorization": f"Bearer {ALICE}"})).text
            assert "the grant is given only when every approver asks for it" in card_of(card, both.id)

            # Both approvers ask for the grant: it is given, by both.
            url = f"{web.url}/requests/{both.id}"
            vote = await client.post(url, data={"action": "approve", "grant": "3600"}, headers=bearer(ALICE))
            assert vote.status_code == 200
            voted = vote.json()
            assert voted["status"] == "pending" and voted["grant"] is None
            assert voted["message"] == (
                "counted: 1 of 2 approvals: alice; you asked to allow the same for 1 hour:"
                " the grant is given only when every approver asks for it"
            )
            assert await hl.grants() == []
            decided = await client.post(url, data={"grant": "3600"}, headers=bearer(BOB))
            assert decided.status_code == 200
            body = decided.json()
            [grant] = await hl.grants()
            assert grant.by == ("alice", "bob") and grant.confirmed and grant.where == {"region": "eu-west-1"}
            assert body["status"] == "approved" and body["mine"] is True
            assert body["grant"] == {
                "id": grant.id,
                "function": grant.function,
                "by": ["alice", "bob"],
                "expires_at": grant.expires_at.isoformat(),
                "uses": 0,
                "max_uses": None,
                "approvals": 2,
                "confirmed": True,
                "revoked": False,
            }
            assert (
                f"allowed the same for 1 hour, {until(grant.expires_at)} (grant {grant.id})"
                in body["message"]
            )

            # Only one asks: approved, no grant, and the answer says why.
            url = f"{web.url}/requests/{one.id}"
            await client.post(url, data={"grant": "3600"}, headers=bearer(ALICE))
            plain = await client.post(url, data={"action": "approve"}, headers=bearer(BOB))
            assert plain.status_code == 200 and "grant" not in plain.json()  # Bob asked for none
            assert (await hl.get(one.id)).decision is not None
            assert [g.id for g in await hl.grants()] == [grant.id]
            # Bob, as a script, asking too late: already decided, no grant.
            late = await client.post(url, data={"grant": "3600"}, headers=bearer(BOB))
            assert late.status_code == 409
            assert late.json()["grant"] is None and late.json()["message"].endswith("; no grant was given")


async def test_a_grant_duration_not_offered_or_without_an_approval_is_a_logged_400_that_decides_nothing() -> (
    None
):
    web = WebChannel(token=KEY, grant_durations=(3600, 1.5))
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:
        ask = hl.human_as_tool()

        @hl.require_approval()
        async def purge(table: str) -> str:
            return "purged"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(purge, "orders")
            [request] = await wait_for_pending(hl, within=5)
            tg.start_soon(ask, "Which region?")
            [question] = await wait_for_pending(hl, kind="question", within=5)
            csrf = await signed_in(client, web)
            assert grant_buttons(card_of((await client.get(str(web.url))).text, request.id)) == [
                ("3600", HOUR),
                ("1.5", "Approve, and allow the same for 1.5 seconds"),
            ]
            assert grant_buttons(card_of((await client.get(str(web.url))).text, question.id)) == []
            url = f"{web.url}/requests/{request.id}"
            with capture_logs() as logs:
                answers = [
                    await client.post(url, data={"csrf": csrf, "grant": value})
                    for value in ("7200", "3600.0", "1e100", "-3600", "one hour", "", "1.50")
                ]
                with_deny = await client.post(
                    url, data={"csrf": csrf, "action": "deny", "comment": "no", "grant": "3600"}
                )
                batch = await client.post(
                    f"{web.url}/batch",
                    data={"csrf": csrf, "action": "approve", "id": request.id, "grant": "3600"},
                )
                to_question = await client.post(
                    f"{web.url}/requests/{question.id}", data={"csrf": csrf, "grant": "3600"}
                )
            assert [a.status_code for a in answers] == [400] * 7
            assert answers[0].text == (
                "grant must be one of the offered durations, in seconds: 3600 (1 hour), 1.5 (1.5 seconds)"
            )
            assert (with_deny.status_code, with_deny.text) == (400, "a grant goes with an approval")
            assert batch.status_code == 400 and "gives no grants" in batch.text
            assert to_question.status_code == 409 and "names no tool to grant" in to_question.text
            assert {r.id for r in await hl.pending()} == {request.id, question.id}
            assert await hl.grants(active=False) == []
            tg.cancel_scope.cancel()
    assert refusals(logs) == [
        *[(400, "grant not offered")] * 7,
        (400, "grant without approval"),
        (400, "grant in a batch"),
        (409, "not decidable"),
    ]


async def test_grant_durations_empty_offers_no_button_and_refuses_a_posted_grant() -> None:
    web = WebChannel(token=KEY, grant_durations=())
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def purge(table: str) -> str:
            return "purged"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(purge, "orders")
            [request] = await wait_for_pending(hl, within=5)
            csrf = await signed_in(client, web)
            page = (await client.get(str(web.url))).text
            detail = (await client.get(f"{web.url}/requests/{request.id}")).text
            assert grant_buttons(page) == grant_buttons(detail) == []
            assert "allow the same" not in page + detail
            assert 'value="approve" class="approve">Approve</button>' in card_of(page, request.id)
            refused = await client.post(
                f"{web.url}/requests/{request.id}", data={"csrf": csrf, "grant": "3600"}
            )
            assert (refused.status_code, refused.text) == (400, "this console offers no grants")
            assert [r.id for r in await hl.pending()] == [request.id]
            tg.cancel_scope.cancel()


# -- the grants view -----------------------------------------------------------------------

HOSTILE_QUERY = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
HOSTILE_NOTE = "harmless\u202e; DROP TABLE users\u2066 --\u200b\x1b[2J"


async def test_the_grants_view_lists_each_grant_escaped_and_who_may_confirm_or_revoke_it() -> None:
    web = WebChannel(
        users={"alice": ALICE, "bob": BOB, "carol": CAROL}, emails={"alice": "alice@company.com"}
    )
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvers=["alice@company.com", "bob"], approvals=2)
        async def run_sql(query: str, note: str) -> str:
            return "ran"

        @hl.require_approval()
        async def restart(service: str) -> str:
            return "restarted"

        proposed = await hl.grant(
            run_sql,
            by="alice@company.com",
            expires_in=timedelta(hours=2),
            where={"query": HOSTILE_QUERY, "note": HOSTILE_NOTE},
            max_uses=5,
        )
        anyone = await hl.grant(restart, by="carol", expires_in=600)
        views = {}
        for user in ("alice", "bob", "carol"):
            async with httpx.AsyncClient() as client:
                await signed_in(client, web, user)
                main = (await client.get(str(web.url))).text
                assert '<a href="/approvals/grants">Grants</a>' in main
                view = await client.get(f"{web.url}/grants")
                assert view.status_code == 200
                assert "default-src 'none'" in view.headers["content-security-policy"]
                views[user] = view.text

        page = views["bob"]
        item = page[page.index(f'id="grant-{proposed.id}"') : page.index(f'id="grant-{anyone.id}"')]
        assert "run_sql" in item and "Waiting for approvers" in item
        assert "needs 1 more approver (1 of 2 gave it)" in item
        assert "alice@company.com" in item and "0 of 5" in item
        assert f"{proposed.expires_at:%Y-%m-%d %H:%M:%S} UTC" in item
        # Every value shown, escaped, its controls spelled out: nothing of it is markup.
        escaped = (
            "&lt;script&gt;window.pwned = 1&lt;/script&gt;"
            "&lt;img src=x onerror=&quot;window.pwned = 2&quot;&gt;"
        )
        assert escaped in item
        assert "harmless\\u202e; DROP TABLE users\\u2066 --\\u200b\\x1b[2J" in item
        assert "<script>" not in page and "<img" not in page
        assert not re.search("[\u202e\u2066\u200b\x1b]", page)
        assert f'action="/approvals/grants/{proposed.id}/confirm"' in item
        assert f'action="/approvals/grants/{proposed.id}/revoke"' in item
        rest = page[page.index(f'id="grant-{anyone.id}"') :]
        assert "Allowed" in rest and "Every call of this tool" in rest and "0 (no limit)" in rest
        assert "/confirm" not in rest and f'action="/approvals/grants/{anyone.id}/revoke"' in rest
        # Alice proposed it: she may revoke, not confirm it again. Carol may do neither.
        assert "You gave it" in views["alice"] and f"{proposed.id}/confirm" not in views["alice"]
        assert f"{proposed.id}/revoke" in views["alice"]
        assert f"{proposed.id}/revoke" not in views["carol"] and f"{anyone.id}/revoke" in views["carol"]
        assert "Only the approvers of its tool may confirm or revoke it." in views["carol"]

        async with httpx.AsyncClient() as client:
            csrf = await signed_in(client, web, "bob")
            confirmed = await client.post(f"{web.url}/grants/{proposed.id}/confirm", data={"csrf": csrf})
            assert confirmed.status_code == 303 and confirmed.headers["location"] == "/approvals/grants"
            [grant] = [g for g in await hl.grants() if g.id == proposed.id]
            assert grant.confirmed and grant.by == ("alice@company.com", "bob")
            after = (await client.get(f"{web.url}/grants")).text
            assert f"{proposed.id}/confirm" not in after and "needs 1 more" not in after
        assert await run_sql(HOSTILE_QUERY, HOSTILE_NOTE) == "ran"  # now it covers the call


async def test_grant_changes_check_the_session_csrf_origin_and_approvers_and_unknown_ids_are_404() -> None:
    web = WebChannel(
        users={"alice": ALICE, "bob": BOB, "carol": CAROL}, emails={"alice": "alice@company.com"}
    )
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval(approvers=["alice@company.com", "bob"], approvals=2)
        async def deploy(service: str) -> str:
            return "deployed"

        grant = await hl.grant(deploy, by="bob", expires_in=3600)
        base = f"{web.url}/grants"
        revoke, confirm = f"{base}/{grant.id}/revoke", f"{base}/{grant.id}/confirm"
        async with (
            httpx.AsyncClient() as anonymous,
            httpx.AsyncClient() as carol,
            httpx.AsyncClient() as alice,
        ):
            carols = await signed_in(carol, web, "carol")
            alices = await signed_in(alice, web, "alice")
            with capture_logs() as logs:
                statuses = [
                    (await anonymous.post(revoke, data={"csrf": alices})).status_code,
                    (await anonymous.get(base)).status_code,
                    (await alice.post(revoke, data={"csrf": "forged"})).status_code,
                    (await alice.post(confirm, data={})).status_code,
                    (
                        await alice.post(
                            revoke, data={"csrf": alices}, headers={"origin": "http://evil.example"}
                        )
                    ).status_code,
                    (
                        await alice.post(
                            confirm, data={"csrf": alices}, headers={"sec-fetch-site": "cross-site"}
                        )
                    ).status_code,
                    (await carol.post(revoke, data={"csrf": carols})).status_code,
                    (await carol.post(confirm, data={"csrf": carols})).status_code,
                    (await carol.post(revoke, data={"csrf": carols}, headers=bearer(CAROL))).status_code,
                    (await alice.post(f"{base}/{'0' * 32}/revoke", data={"csrf": alices})).status_code,
                    (await alice.post(f"{base}/{'0' * 32}/confirm", data={"csrf": alices})).status_code,
                    (await alice.post(f"{base}/not%20an%20id/revoke", data={"csrf": alices})).status_code,
                    (await alice.get(revoke)).status_code,
                ]
                assert statuses == [401, 401, 403, 403, 403, 403, 403, 403, 403, 404, 404, 404, 405]
                [untouched] = await hl.grants(active=False)
                assert untouched == grant  # nothing of the above changed it

                # Alice (known by her email, as the approver list names her) revokes it; then
                # confirming it is a 409, and so is nothing else.
                done = await alice.post(revoke, data={"csrf": alices}, headers={"accept": "application/json"})
                late = await alice.post(
                    confirm, data={"csrf": alices}, headers={"accept": "application/json"}
                )
            assert done.status_code == 200
            assert done.json()["status"] == "revoked" and done.json()["grant"]["revoked"] is True
            assert done.json()["message"].startswith("revoked by alice@company.com at ")
            assert late.status_code == 409 and "cannot be confirmed" in late.text
            [revoked] = await hl.grants(active=False)
            assert revoked.revoked_by == "alice@company.com" and revoked.by == ("bob",)
            assert await hl.grants() == []
            assert "No grant is live." in (await alice.get(base)).text
    assert refusals(logs) == [
        (401, "no session"),
        (401, "no session"),
        (403, "bad csrf token"),
        (403, "bad csrf token"),
        (403, "cross-origin request"),
        (403, "cross-site request"),
        (403, "not an approver"),
        (403, "not an approver"),
        (403, "not an approver"),
        (404, "unknown grant"),
        (404, "unknown grant"),
        (404, "unknown grant"),
        (405, "method not allowed"),
        (409, "grant not confirmable"),
    ]


async def test_the_grant_button_and_the_grants_view_work_on_a_durable_store(store_url: str) -> None:
    web = WebChannel(token=KEY)
    async with HumanLayer([web], store=store_from_url(store_url), listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def restart(service: str) -> str:
            return f"restarted {service}"

        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            tg.start_soon(restart, "api")
            [request] = await wait_for_pending(hl, within=5)
            await signed_in(client, web)
            answer = await client.post(
                f"{web.url}/requests/{request.id}", data={"grant": "3600"}, headers=bearer(KEY)
            )
            [grant] = await hl.grants()
            assert answer.json()["grant"]["id"] == grant.id
            assert until(grant.expires_at) in answer.json()["message"]
            assert await restart("api") == "restarted api"
            assert "1 (no limit)" in (await client.get(f"{web.url}/grants")).text
            revoked = await client.post(f"{web.url}/grants/{grant.id}/revoke", data={}, headers=bearer(KEY))
            assert revoked.json()["status"] == "revoked"
            tg.start_soon(restart, "api")
            [again] = await wait_for_pending(hl, within=5)
            assert again.kwargs == {"service": "api"}
            tg.cancel_scope.cancel()


# -- headless Chromium ---------------------------------------------------------------------


async def test_browser_grants_from_the_card_then_revokes_in_the_grants_view(browser_page: Any) -> None:
    page = browser_page
    web = WebChannel()
    decisions: list[Decision | None] = []
    async with HumanLayer([web], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def restart(service: str) -> str:
            decisions.append(current_decision())
            return f"restarted {service}"

        await page.goto(web.login_url())
        await page.locator("#connection", has_text="on").wait_for()
        async with anyio.create_task_group() as tg:
            tg.start_soon(restart, "api")
            [request] = await wait_for_pending(hl, within=5)
            card = page.locator(f"#req-{request.id}")
            await card.get_by_role("button", name=HOUR).click()
            outcome = page.locator("#outcome", has_text="approved by web-console via web")
            await outcome.wait_for()
            await card.wait_for(state="detached")
        [grant] = await hl.grants()
        assert f"allowed the same for 1 hour, {until(grant.expires_at)}" in await outcome.inner_text()

        with anyio.fail_after(5):  # the same call again: it runs without asking
            assert await restart("api") == "restarted api"
        assert [d.via if d else None for d in decisions] == ["web", "grant"]
        assert decisions[1] is not None and decisions[1].grant == grant.id

        await page.get_by_role("link", name="Grants").click()
        await page.wait_for_url(f"{web.url}/grants")
        item = page.locator(f"#grant-{grant.id}")
        await item.get_by_text("1 (no limit)").wait_for()  # used once
        await item.get_by_role("button", name="Revoke").click()
        await page.get_by_text("No grant is live.").wait_for()
        assert page.url == f"{web.url}/grants"
        [revoked] = await hl.grants(active=False)
        assert revoked.revoked_by == "web-console"

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart, "api")
            [again] = await wait_for_pending(hl, within=5)  # the third call asks again
            assert again.kwargs == {"service": "api"}
            await page.get_by_role("link", name="All requests").click()
            await page.locator(f"#req-{again.id}").get_by_role("button", name="Approve", exact=True).click()
        assert [d.via if d else None for d in decisions] == ["web", "grant", "web"]
        assert [g.id for g in await hl.grants(active=False)] == [grant.id]  # no new grant
