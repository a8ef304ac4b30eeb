"""The webhook channel against a real receiver on loopback: signed deliveries, retries, and
the links a private receiver gets, opened and posted over HTTP at the real listener."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalTimeout,
    ChannelError,
    ConfigurationError,
    HumanLayer,
    Status,
)
from humanlayer_async.channels.webhook import WebhookChannel
from humanlayer_async.stores import store_from_url

from .conftest import LateDecider, Outcomes, decision, make_request, serving

pytestmark = pytest.mark.anyio

SECRET = "webhook-signing-secret-0123"
TOKEN_KEY = "webhook-link-token-key-4567"
ALICE = "alice@company.com"
BOB = "bob@company.com"
DOCS = Path(__file__).parent.parent / "docs" / "channels" / "webhook.md"


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic() when it arrived
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


class Receiver:
    """A webhook receiver: records each POST; answers with ``answers`` first (status, headers),
    then 200."""

    def __init__(self) -> None:
        self.url = ""
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.got: list[Delivery] = []
        self._send, self._receive = anyio.create_memory_object_stream[Delivery](100)
        self.streams = contextlib.ExitStack()
        self.streams.enter_context(self._send)
        self.streams.enter_context(self._receive)

    async def endpoint(self, request: Request) -> Response:
        delivery = Delivery(time.monotonic(), dict(request.headers), await request.body())
        self.got.append(delivery)
        self._send.send_nowait(delivery)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return Response(status_code=status, headers=headers)

    async def next(self, within: float = 10.0) -> Delivery:
        with anyio.fail_after(within):
            return await self._receive.receive()

    async def event(self, name: str) -> dict[str, Any]:
        """The next delivery's payload, which must be of event ``name``."""
        payload = (await self.next()).json()
        assert payload["event"] == name
        return payload


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    with receiver.streams:
        async with serving([Route("/hook", receiver.endpoint, methods=["POST"])]) as client:
            receiver.url = str(client.base_url.join("/hook"))
            yield receiver


def private(receiver: Receiver, *approvers: str, **options: Any) -> WebhookChannel:
    return WebhookChannel(
        url=receiver.url,
        secret=SECRET,
        private=True,
        approvers=approvers or (ALICE,),
        token_secret=TOKEN_KEY,
        **options,
    )


def documented_verify() -> Callable[..., bool]:
    """``verify()`` as the docs print it for receivers to copy."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    [snippet] = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verify = namespace["verify"]
    assert callable(verify)
    return verify  # type: ignore[no-any-return]


def signed(delivery: Delivery, secret: str = SECRET) -> bool:
    """Whether the signature is the HMAC-SHA256 of "{timestamp}.{body}" (recomputed here)."""
    timestamp = delivery.headers["x-humanlayer-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    return delivery.headers["x-humanlayer-signature"] == f"sha256={expected}"


def token_of(url: str) -> str:
    return httpx.URL(url).params["token"]


def links_of(payload: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {link["approver"]: {k: v for k, v in link.items() if k != "approver"} for link in payload["links"]}


def refusals(logs: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    return [(entry["status"], entry["reason"]) for entry in logs if entry["event"] == "listener.refused"]


async def post_link(client: httpx.AsyncClient, url: str, **fields: str) -> httpx.Response:
    """The confirmation page's button: the form, with the link's token, to the page's action."""
    link = httpx.URL(url)
    return await client.post(str(link.copy_with(query=None)), data={"token": token_of(url), **fields})


# -- deliveries ------------------------------------------------------------------------------


async def test_each_delivery_is_signed_and_carries_the_request_then_its_outcome() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl:

            @hl.require_approval(context={"ticket": "OPS-7"})
            async def transfer(amount: float, recipient: str, api_key: str) -> str:
                """Move money to a recipient.

                Irreversible."""
                return "sent"

            async with anyio.create_task_group() as tg:
                Outcomes(tg).start(lambda: transfer(12000.0, "acme-ltd", "sk-live-1234"))
                first = await receiver.next()
                [request] = await hl.pending()
                await hl.decide(request.id, False, by=BOB, comment="not this quarter")
                second = await receiver.next()
                tg.cancel_scope.cancel()
    verify = documented_verify()
    for delivery in (first, second):
        assert delivery.headers["content-type"] == "application/json"
        assert abs(int(delivery.headers["x-humanlayer-timestamp"]) - time.time()) < 30
        assert signed(delivery)
        assert not signed(delivery, secret="another-secret-01234567")
        timestamp, signature = (
            delivery.headers["x-humanlayer-timestamp"],
            delivery.headers["x-humanlayer-signature"],
        )
        assert verify(SECRET.encode(), timestamp, signature, delivery.body)
        assert not verify(SECRET.encode(), timestamp, signature, delivery.body.replace(b"acme", b"acne"))
        assert not verify(b"another-secret-01234567", timestamp, signature, delivery.body)
    # The documented check takes a correctly signed delivery from four minutes ago, not six.
    for age, fresh in ((240, True), (360, False)):
        then = str(int(time.time()) - age)
        mac = hmac.new(SECRET.encode(), f"{then}.".encode() + first.body, hashlib.sha256).hexdigest()
        assert verify(SECRET.encode(), then, f"sha256={mac}", first.body) is fresh

    asked, told = first.json(), second.json()
    assert asked["event"] == "approval.requested" and told["event"] == "approval.decided"
    assert asked["delivery"] != told["delivery"]
    shown = asked["request"]
    assert shown["id"] == request.id and shown["kind"] == "approval" and shown["function"] == "transfer"
    assert shown["arguments"] == {"amount": "12000.0", "recipient": "acme-ltd", "api_key": "***"}
    assert shown["context"] == {"ticket": "OPS-7"} and shown["shortened"] is False
    assert shown["doc"] == "Move money to a recipient." and shown["status"] == "pending"
    assert shown["expires_at"] == request.expires_at.isoformat() and shown["decision"] is None
    assert "sk-live" not in first.body.decode()
    assert list(links_of(asked)) == [ALICE]
    assert set(links_of(asked)[ALICE]) == {"approve", "deny"}
    assert told["links"] == [] and told["request"]["status"] == "denied"
    outcome = told["request"]["decision"]
    assert (outcome["by"], outcome["via"], outcome["comment"]) == (BOB, "api", "not this quarter")
    assert outcome["description"].startswith(f"denied by {BOB} via api")


async def test_5xx_and_429_are_retried_and_retry_after_is_honoured() -> None:
    async with receiving() as receiver:
        receiver.answers = [(503, {}), (429, {"Retry-After": "1"})]
        hook = private(receiver)
        hook.retry_delays = (0.05, 0.05, 0.05)
        async with anyio.create_task_group() as tg:
            await tg.start(hook.run, LateDecider(make_request("a" * 32), decision("a" * 32, True, "x")))
            hook.listening("http://127.0.0.1:9")
            with capture_logs() as logs:
                ref = await hook.send(make_request("a" * 32, approvers=()))
            tg.cancel_scope.cancel()
    first, second, third = receiver.got
    assert second.at - first.at >= 0.05
    assert second.at - first.at < 1.0  # the 503 said nothing: the schedule's short wait
    assert third.at - second.at >= 1.0  # the 429 asked for a second
    assert first.json()["delivery"] == second.json()["delivery"] == third.json()["delivery"] == ref
    assert all(signed(delivery) for delivery in receiver.got)
    retries = [entry for entry in logs if entry["event"] == "webhook.retry"]
    assert [entry["error"] for entry in retries] == ["HTTP 503", "HTTP 429"]
    assert all(receiver.url not in json.dumps(entry) for entry in logs)  # webhook URLs hold secrets


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
async def test_another_answer_is_not_retried_and_the_request_fails_closed(status: int) -> None:
    async with receiving() as receiver:
        receiver.answers = [(status, {"location": "https://elsewhere.example/"})]
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl:

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            with anyio.fail_after(10), pytest.raises(ChannelError, match=f"HTTP {status}"):
                await deploy()
            [delivery] = receiver.got
            failed = await hl.get(delivery.json()["request"]["id"])
    assert failed.status is Status.FAILED


async def test_retries_end_with_a_channel_error_when_exhausted_or_out_of_time() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        hook.retry_delays = (0.01, 0.01)
        async with anyio.create_task_group() as tg:
            await tg.start(hook.run, LateDecider(make_request("b" * 32), decision("b" * 32, True, "x")))
            hook.listening("http://127.0.0.1:9")
            receiver.answers = [(500, {})] * 3
            with pytest.raises(ChannelError, match="failed 3 times: HTTP 500"):
                await hook.send(make_request("b" * 32, approvers=()))
            receiver.answers = [(429, {"Retry-After": "3600"})]
            started = time.monotonic()
            with pytest.raises(ChannelError, match="time ran out"):
                await hook.send(make_request("b" * 32, approvers=(), lifetime=60))
            assert time.monotonic() - started < 5  # it did not wait an hour to give up
            tg.cancel_scope.cancel()
    assert len(receiver.got) == 4


async def test_host_names_are_looked_up_on_the_librarys_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[tuple[str, str]] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append((str(host), threading.current_thread().name))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    async with receiving() as receiver:
        hook = WebhookChannel(url=receiver.url.replace("127.0.0.1", "localhost"), secret=SECRET)
        async with anyio.create_task_group() as tg:
            await tg.start(hook.run, LateDecider(make_request("c" * 32), decision("c" * 32, True, "x")))
            await hook.send(make_request("c" * 32))
            tg.cancel_scope.cancel()
    [delivery] = receiver.got
    assert delivery.headers["host"].startswith("localhost:") and signed(delivery)
    threads = [thread for host, thread in looked_up if host == "localhost"]
    assert threads and all(thread.startswith("humanlayer-io-") for thread in threads)


# -- who gets links ------------------------------------------------------------------------------


async def test_a_group_receiver_gets_no_links_and_links_go_only_to_who_may_decide() -> None:
    async with receiving() as receiver:
        group = WebhookChannel(
            url=receiver.url,
            secret=SECRET,
            approvers=[ALICE],
            console_url="https://approvals.example.com/approvals/",
        )
        mine = private(receiver, ALICE, BOB, "mallory@company.com", public_url="https://ops.example.com/hl/")
        assert group.routes() == () and mine.routes()
        async with anyio.create_task_group() as tg:
            for channel in (group, mine):
                await tg.start(
                    channel.run, LateDecider(make_request("d" * 32), decision("d" * 32, True, "x"))
                )
            await group.send(make_request("d" * 32))
            await mine.send(make_request("d" * 32, approvers=(ALICE, BOB), requested_by=BOB))
            await mine.send(make_request("e" * 32, kind="question", message="Which region?", approvers=()))
            tg.cancel_scope.cancel()
    to_group, narrowed, question = (delivery.json() for delivery in receiver.got)
    assert to_group["links"] == [] and "token=" not in receiver.got[0].body.decode()
    assert to_group["console_url"] == f"https://approvals.example.com/approvals/requests/{'d' * 32}"
    # mallory is not on the tool's list, and bob requested the call: alice's links only.
    assert list(links_of(narrowed)) == [ALICE]
    assert all(
        url.startswith("https://ops.example.com/hl/webhook/links?token=")
        for url in links_of(narrowed)[ALICE].values()
    )
    assert {name: set(urls) for name, urls in links_of(question).items()} == {
        ALICE: {"answer"},
        BOB: {"answer"},
        "mallory@company.com": {"answer"},
    }


def test_the_configuration_is_checked() -> None:
    url = "https://hooks.example.com/approvals?sig=s3cr3t"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "needs secret="),
        ({"secret": "short"}, "at least 16"),
        ({"secret": SECRET, "private": True}, "name them with approvers="),
        ({"secret": SECRET, "private": True, "approvers": [ALICE], "token_secret": SECRET}, "must differ"),
        ({"secret": SECRET, "payload_format": "slack"}, "payload_format"),
        ({"secret": SECRET, "label": "ops room"}, "pass base_path="),
        ({"secret": SECRET, "public_url": "ftp://example.com"}, "public_url must be"),
        ({"secret": SECRET, "approvers": [""]}, "non-empty"),
    ]
    for options, said in cases:
        with pytest.raises(ConfigurationError, match=said):
            WebhookChannel(url=url, **options)
    with pytest.raises(ConfigurationError, match="url must be"):
        WebhookChannel(url="mailto:ops@example.com", secret=SECRET)
    assert WebhookChannel(url=url, payload_format="teams").routes() == ()  # Teams checks no signature
    labelled = WebhookChannel(
        url=url, secret=SECRET, label="ops", private=True, approvers=[ALICE], token_secret=TOKEN_KEY
    )
    assert [route.path for route in labelled.routes()] == ["/webhook/ops/links"]  # type: ignore[attr-defined]
    assert "s3cr3t" not in repr(labelled) and "approvals" not in repr(labelled)


async def test_links_need_an_address_to_be_opened_at() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen=None) as hl:

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            with pytest.raises(ChannelError, match="public_url="):
                await deploy()
        everywhere = private(receiver)
        async with anyio.create_task_group() as tg:
            await tg.start(everywhere.run, LateDecider(make_request("f" * 32), decision("f" * 32, True, "x")))
            everywhere.listening("http://0.0.0.0:8787")
            with pytest.raises(ChannelError, match="every interface"):
                await everywhere.send(make_request("f" * 32, approvers=()))
            tg.cancel_scope.cancel()
    assert receiver.got == []


# -- the links ---------------------------------------------------------------------------------


SECURITY = ("content-security-policy", "x-frame-options", "referrer-policy", "x-content-type-options")


async def test_opening_a_link_decides_nothing_and_its_button_decides_once() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval(approvers=[ALICE])
            async def transfer(amount: int) -> str:
                return f"sent {amount}"

            async with anyio.create_task_group() as tg:
                calls: list[str] = []

                async def call() -> None:
                    calls.append(await transfer(5))

                tg.start_soon(call)
                asked = await receiver.event("approval.requested")
                urls = links_of(asked)[ALICE]
                with capture_logs() as logs:
                    page = await client.get(urls["approve"])
                    head = await client.head(urls["approve"])
                    denial_page = await client.get(urls["deny"])
                    assert [r.id for r in await hl.pending()] == [asked["request"]["id"]]
                    approved = await post_link(client, urls["approve"], comment="fine")
                    again = await post_link(client, urls["approve"])
                    deny_after = await post_link(client, urls["deny"])
                    opened_after = await client.get(urls["approve"])
                told = await receiver.event("approval.decided")
    assert page.status_code == 200 and head.status_code == 200 and denial_page.status_code == 200
    assert all(header in page.headers for header in SECURITY)
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert "Approve this call?" in page.text and ALICE in page.text and "amount = 5" in page.text
    assert (
        f'value="{token_of(urls["approve"])}"' in page.text
        and 'method="post" action="/webhook/links"' in page.text
    )
    assert "Deny this call?" in denial_page.text
    assert approved.status_code == 200 and "Approved" in approved.text
    assert calls == ["sent 5"]
    assert again.status_code == 409 and "already approved by alice@company.com via webhook" in again.text
    assert deny_after.status_code == 409 and opened_after.status_code == 409
    assert "already approved by alice@company.com via webhook" in opened_after.text
    outcome = told["request"]["decision"]
    assert (outcome["by"], outcome["via"], outcome["comment"]) == (ALICE, "webhook", "fine")
    assert refusals(logs) == [(409, "already decided")] * 3
    tokens = [token_of(url) for url in urls.values()]
    assert all(token not in json.dumps(entry, default=str) for entry in logs for token in tokens)


async def test_a_link_posted_four_times_at_once_at_two_processes_counts_once(store_url: str) -> None:
    # Two approvals needed: without the link's claim in the store, each post would be a vote
    # again (the same person counts once, so all four would say "counted"); with it, one is.
    async with receiving() as receiver:
        hooks = [private(receiver, ALICE, BOB), private(receiver, ALICE, BOB)]
        async with (
            HumanLayer([hooks[0]], store=store_from_url(store_url), listen="127.0.0.1:0") as hl,
            HumanLayer([hooks[1]], store=store_from_url(store_url), listen="127.0.0.1:0") as other,
            httpx.AsyncClient() as client,
        ):

            @hl.require_approval(approvals=2)
            async def deploy() -> str:
                return "deployed"

            async with anyio.create_task_group() as tg:
                tg.start_soon(deploy)
                asked = await receiver.event("approval.requested")
                approve = links_of(asked)[ALICE]["approve"]
                at_other = approve.replace(str(hl.url), str(other.url))
                answers: list[httpx.Response] = []

                async def click(url: str) -> None:
                    answers.append(await post_link(client, url))

                with capture_logs() as logs:
                    async with anyio.create_task_group() as clicks:
                        for url in (approve, at_other, approve, at_other):
                            clicks.start_soon(click, url)
                voted = await receiver.event("approval.voted")
                bobs = await post_link(
                    client, links_of(voted)[BOB]["approve"].replace(str(hl.url), str(other.url))
                )
                told = await receiver.event("approval.decided")
    assert sorted(answer.status_code for answer in answers) == [200, 409, 409, 409]
    assert sum("Your approval is counted" in answer.text for answer in answers) == 1
    assert refusals(logs) == [(409, "used link")] * 3
    assert bobs.status_code == 200
    decision = told["request"]["decision"]
    assert decision["status"] == "approved" and decision["via"] == "webhook"
    assert [(vote["by"], vote["via"]) for vote in decision["votes"]] == [(ALICE, "webhook"), (BOB, "webhook")]


async def test_expired_altered_forged_and_malformed_links_are_refused_with_a_page() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval()
            async def rollback() -> str:
                return "rolled back"

            async with anyio.create_task_group() as tg:
                tg.start_soon(rollback)
                urls = links_of(await receiver.event("approval.requested"))[ALICE]
                approve = urls["approve"]
                signed_part, mac = token_of(approve).split(".")
                fields = json.loads(base64.urlsafe_b64decode(signed_part + "=" * (-len(signed_part) % 4)))
                fields[2] = "deny"  # the same approver and call, another answer: the MAC no longer fits
                as_deny = base64.urlsafe_b64encode(
                    json.dumps(fields, separators=(",", ":")).encode()
                ).decode()
                forged_mac = base64.urlsafe_b64encode(
                    hmac.new(SECRET.encode(), as_deny.rstrip("=").encode(), hashlib.sha256).digest()[:16]
                ).decode()
                page = approve.split("?")[0]
                with capture_logs() as logs:
                    altered = [
                        await client.get(page, params={"token": token})
                        for token in (
                            f"{signed_part}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",
                            f"{as_deny.rstrip('=')}.{mac}",
                            f"{as_deny.rstrip('=')}.{forged_mac.rstrip('=')}",  # the receiver's key
                            "",
                            "abc",
                            "a.b",
                            "é.é",
                            "%00.%ff",
                            "x" * 5000 + "." + mac,
                        )
                    ]
                    no_token = await client.get(page)
                    not_a_form = await client.post(page, json={"token": token_of(approve)})
                    repeated = await client.post(
                        page,
                        content=f"token={token_of(approve)}&token={token_of(approve)}",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                    bad_bytes = await client.post(
                        page,
                        content=b"token=" + token_of(approve).encode() + b"&comment=%FF%FE",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                    )
                    too_long = await post_link(client, approve, comment="x" * 2001)
                    get_decided_nothing = [r.function for r in await hl.pending()]
                tg.cancel_scope.cancel()
    assert [r.status_code for r in altered] == [403] * 9
    assert all("This link is not valid" in r.text and "content-security-policy" in r.headers for r in altered)
    assert no_token.status_code == 403
    assert (not_a_form.status_code, repeated.status_code, bad_bytes.status_code, too_long.status_code) == (
        415,
        400,
        400,
        400,
    )
    assert get_decided_nothing == ["rollback"]
    assert all(token_of(approve) not in json.dumps(entry, default=str) for entry in logs)
    assert len(refusals(logs)) == 14


async def test_a_link_past_its_request_expiry_gets_a_410() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval(timeout=1)
            async def deploy() -> str:
                return "deployed"

            async with anyio.create_task_group() as tg:
                ended: list[BaseException] = []

                async def call() -> None:
                    try:
                        await deploy()
                    except ApprovalTimeout as exc:
                        ended.append(exc)

                tg.start_soon(call)
                urls = links_of(await receiver.event("approval.requested"))[ALICE]
                told = await receiver.event("approval.decided")  # the timeout, once the call stopped waiting
                with capture_logs() as logs:
                    opened = await client.get(urls["approve"])
                    posted = await post_link(client, urls["deny"])
    assert ended and told["request"]["status"] == "timed_out"
    assert (opened.status_code, posted.status_code) == (410, 410)
    assert "This link has expired" in opened.text
    assert refusals(logs) == [(410, "expired link"), (410, "expired link")]


async def test_a_removed_approvers_links_no_longer_work_in_any_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'approvals.db'}"
    async with receiving() as receiver:
        minted = private(receiver, ALICE, BOB)
        reconfigured = private(receiver, BOB)  # alice was removed from this process's list
        async with (
            HumanLayer([minted], store=store_from_url(url), listen="127.0.0.1:0") as hl,
            HumanLayer([reconfigured], store=store_from_url(url), listen="127.0.0.1:0") as other,
            httpx.AsyncClient() as client,
        ):

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            async with anyio.create_task_group() as tg:
                outcomes = Outcomes(tg)
                outcomes.start(deploy)
                links = links_of(await receiver.event("approval.requested"))
                alices = links[ALICE]["approve"].replace(str(hl.url), str(other.url))
                refused = await post_link(client, alices)
                bobs = await post_link(
                    client, links[BOB]["deny"].replace(str(hl.url), str(other.url)), comment="no"
                )
                await receiver.event("approval.decided")
    assert refused.status_code == 403 and "alice@company.com is not an approver" in refused.text
    assert bobs.status_code == 200 and "Denied" in bobs.text
    [denied] = outcomes.ended
    assert isinstance(denied, ApprovalDenied)


async def test_a_vote_posts_the_count_with_links_for_those_yet_to_answer() -> None:
    async with receiving() as receiver:
        hook = private(receiver, ALICE, BOB)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval(approvers=[ALICE, BOB], approvals=2)
            async def deploy() -> str:
                return "deployed"

            async with anyio.create_task_group() as tg:
                tg.start_soon(deploy)
                first = links_of(await receiver.event("approval.requested"))
                counted = await post_link(client, first[ALICE]["approve"])
                voted = await receiver.event("approval.voted")
                again = await post_link(client, first[ALICE]["deny"])  # alice answered this call already
                decided = await post_link(client, links_of(voted)[BOB]["approve"])
                told = await receiver.event("approval.decided")
    assert counted.status_code == 200 and "Your approval is counted: 1 of 2 approvals" in counted.text
    assert list(links_of(voted)) == [BOB] and voted["request"]["votes"][0]["by"] == ALICE
    assert again.status_code == 409 and "This link was used" in again.text
    assert decided.status_code == 200
    assert told["request"]["status"] == "approved" and told["links"] == []


async def test_a_question_is_answered_from_its_link() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:
            ask = hl.human_as_tool()
            async with anyio.create_task_group() as tg:
                answers: list[str] = []

                async def call() -> None:
                    answers.append(await ask("Which region <b>first</b>?"))

                tg.start_soon(call)
                asked = await receiver.event("approval.requested")
                url = links_of(asked)[ALICE]["answer"]
                page = await client.get(url)
                empty = await post_link(client, url, answer="  ")
                answered = await post_link(client, url, answer="eu-west-1")
                await receiver.event("approval.decided")
    assert (
        asked["request"]["kind"] == "question" and asked["request"]["message"] == "Which region <b>first</b>?"
    )
    assert page.status_code == 200 and 'name="answer"' in page.text and "&lt;b&gt;first" in page.text
    assert empty.status_code == 400 and answered.status_code == 200
    assert answers == ["eu-west-1"]


HOSTILE = {
    "note": "<script>alert(1)</script>",
    "to": '"><img src=x onerror=alert(1)>',
    "memo": "pay \u202eevil\u202c now",
    "sql": "SELECT 1;" + " " * 60 + "DROP TABLE users",
}


async def test_hostile_argument_values_are_escaped_on_the_confirmation_page() -> None:
    async with receiving() as receiver:
        hook = private(receiver)
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval(context={"<i>ctx</i>": "[click](https://evil.example)"})
            async def pay(note: str, to: str, memo: str, sql: str) -> str:
                return "paid"

            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pay(**HOSTILE))
                asked = await receiver.event("approval.requested")
                page = await client.get(links_of(asked)[ALICE]["approve"])
                tg.cancel_scope.cancel()
    html = page.text
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "\u202e" not in html and "\\u202e" in html
    assert "⟨60 spaces⟩" in html  # a run of spaces cannot push the DROP TABLE out of sight
    assert "<i>" not in html and "&lt;i&gt;ctx&lt;/i&gt;" in html
    assert asked["request"]["arguments"]["memo"] == "pay \\u202eevil\\u202c now"
    assert "\u202e" not in json.dumps(asked, ensure_ascii=False)


# -- Teams and Discord --------------------------------------------------------------------------


def card_texts(card: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (element type, text) of a card's body: TextBlocks and RichTextBlocks' TextRuns."""
    for element in card["body"]:
        if element["type"] == "TextBlock":
            yield "TextBlock", element["text"]
        elif element["type"] == "RichTextBlock":
            for run in element["inlines"]:
                assert run["type"] == "TextRun"
                yield "TextRun", run["text"]


async def test_teams_gets_an_adaptive_card_whose_buttons_open_the_confirmation_pages() -> None:
    async with receiving() as receiver:
        hook = private(receiver, ALICE, BOB, payload_format="teams")
        async with HumanLayer([hook], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

            @hl.require_approval()
            async def pay(note: str, to: str, memo: str, sql: str) -> str:
                return "paid"

            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pay(**HOSTILE))
                asked = await receiver.next()
                card = asked.json()["attachments"][0]["content"]
                pages = [await client.get(action["url"]) for action in card["actions"]]
                await post_link(client, card["actions"][0]["url"])
                told = (await receiver.next()).json()
    message = asked.json()
    assert message["type"] == "message" and signed(asked)
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert isinstance(card["body"], list) and card["body"]
    assert all({"type"} <= set(element) for element in card["body"])
    assert [(action["type"], action["title"]) for action in card["actions"]] == [
        ("Action.OpenUrl", f"Approve as {ALICE}"),
        ("Action.OpenUrl", f"Deny as {ALICE}"),
        ("Action.OpenUrl", f"Approve as {BOB}"),
        ("Action.OpenUrl", f"Deny as {BOB}"),
    ]
    assert all(page.status_code == 200 and "this call?" in page.text for page in pages)
    texts = list(card_texts(card))
    # What came from the call is only ever in TextRuns, which Teams never reads as Markdown.
    assert {text for kind, text in texts if kind == "TextBlock"} <= {
        "Approval needed",
        "Arguments",
        "Context",
    }
    runs = [text for kind, text in texts if kind == "TextRun"]
    assert "<script>alert(1)</script>" in runs and "pay \\u202eevil\\u202c now" in runs
    outcome = told["attachments"][0]["content"]
    assert outcome["body"][0]["text"] == "Approved" and "actions" not in outcome
    assert any(text.startswith(f"Approved by {ALICE} via webhook") for _, text in card_texts(outcome))


async def test_discord_gets_an_embed_that_escapes_markdown_and_mentions_nobody() -> None:
    async with receiving() as receiver:
        hook = WebhookChannel(
            url=receiver.url, payload_format="discord", console_url="https://approvals.example.com/approvals"
        )
        async with anyio.create_task_group() as tg:
            await tg.start(hook.run, LateDecider(make_request("g" * 32), decision("g" * 32, True, "x")))
            kwargs = {"who": "@everyone", "link": "[Approve](https://evil.example)", "big": "x" * 5000}
            await hook.send(make_request("g" * 32, kwargs=kwargs, approvers=()))
            many = {f"arg{n}": "y" * 290 for n in range(40)}
            await hook.send(make_request("h" * 32, kwargs=many, approvers=()))
            tg.cancel_scope.cancel()
    first, second = (delivery.json() for delivery in receiver.got)
    assert "X-HumanLayer-Signature".lower() not in receiver.got[0].headers  # no secret: nothing to sign with
    assert first["allowed_mentions"] == {"parse": []}
    [embed] = first["embeds"]
    assert embed["title"] == "Approval needed"
    description = embed["description"]
    assert description.startswith(
        f"[Open in the approvals console](https://approvals.example.com/approvals/requests/{'g' * 32})"
    )
    assert "**who**: \\@everyone" in description
    assert "\\[Approve\\]\\(https\\:" in description and "[Approve](https://evil" not in description
    assert "… 4,700 more characters" in description
    long = second["embeds"][0]["description"]
    assert len(long) <= 4096 and re.search(r"… [\d,]+ more lines$", long)
