"""Property-based fuzzing of every inbound route: arbitrary bodies, headers, encodings and
sizes never produce a 500, an exception out of the app, a hang, or a decision.

Most examples go through ``httpx.ASGITransport`` into ``hl.asgi_app`` (fast, and an exception
escaping the app fails the test); one pass throws raw bytes at the real listener over TCP.
Signed and authenticated variants get past each route's signature check, so the parsing
behind it is fuzzed too; none of them can carry a genuine answer (the approver's Slack id, a
valid reply token, the console's CSRF token with a real action), so none may decide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from humanlayer_async import ApprovalRequest, HumanLayer, Status
from humanlayer_async.channels import SlackChannel
from humanlayer_async.channels import _slack_blocks as blocks
from humanlayer_async.testing import sign_slack_body, slack_form_body, wait_for_pending

from .conftest import SECRET as EMAIL_SECRET
from .conftest import Inbox, sign_generic
from .fake_slack import BOT_TOKEN, FakeSlack
from .hostile import PROVIDERS, SLACK_APPROVER, SLACK_SECRET, Site, serving, web_session

pytestmark = pytest.mark.anyio

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PATIENCE = 10.0  # seconds any one request may take before it counts as a hang

# -- strategies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/json",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "text/plain",
        "application/octet-stream",
        "",
    ]
)
encodings = st.sampled_from(["utf-8", "utf-16", "latin-1", "utf-8-sig"])
bodies = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=512).map(str.encode),
    st.builds(lambda text, enc: text.encode(enc, "replace"), st.text(max_size=256), encodings),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"", b"[" * 50_000, b"{" * 50_000, b"a=" * 20_000, b"\x00" * 100_000]),
)
extra_headers = st.dictionaries(header_names, header_values, max_size=5)


def not_the_approver(user: str) -> bool:
    return user != SLACK_APPROVER


# -- shared fixtures and checks ----------------------------------------------------------------


@pytest.fixture
async def site(fake_slack: FakeSlack, inbox: Inbox) -> AsyncIterator[Site]:
    async with serving(fake_slack, inbox, listen=None) as running:
        yield running


@pytest.fixture
async def client(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    """A loopback client of ``hl.asgi_app``; once the fuzzing is over, the real click still decides."""
    transport = httpx.ASGITransport(app=site.hl.asgi_app, client=("127.0.0.1", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
        client.cookies.clear()
        await genuine_answer_still_works(site, client)


@pytest.fixture
async def csrf(client: httpx.AsyncClient) -> str:
    """``client`` signed in to the console: its CSRF token."""
    return await web_session(client)


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request that must neither hang nor fail with a 5xx, nor log a listener error."""
    with capture_logs() as logs, anyio.fail_after(PATIENCE):
        response = await client.request(method, url, **kwargs)
    assert response.status_code < 500, (response.status_code, response.text[:200])
    assert not [entry for entry in logs if entry["event"] == "listener.error"]
    return response


async def still_untouched(site: Site) -> None:
    assert await site.untouched()


async def genuine_answer_still_works(site: Site, client: httpx.AsyncClient) -> None:
    """After the fuzzing: the approver's real click decides, and the tool runs once."""
    body = slack_form_body(
        {
            "type": "block_actions",
            "user": {"id": SLACK_APPROVER},
            "trigger_id": "1.2.3",
            "container": {"channel_id": "C0APPROVALS"},
            "actions": [{"action_id": blocks.APPROVE, "value": site.request.id}],
        }
    )
    response = await send(
        client, "POST", "/slack/events", content=body, headers=sign_slack_body(body, SLACK_SECRET)
    )
    assert response.status_code == 200
    with anyio.fail_after(5):
        while not site.outcomes.ended:
            await anyio.sleep(0.01)
    assert site.outcomes.ended == ["wired 5000"] and site.runs == ["wired 5000"]
    assert (await site.hl.get(site.request.id)).status is Status.APPROVED


# -- /slack/events -----------------------------------------------------------------------------


REAL_ID, REAL_PREFIX, REAL_CSRF = "@@id@@", "@@id8@@", "@@csrf@@"
"""Placeholders a strategy draws, replaced in the test by the waiting request's id (or its
first eight characters) and the console's CSRF token, which only exist once it runs."""

ids = st.one_of(
    st.sampled_from([REAL_ID, REAL_PREFIX, REAL_ID + "0", "../" + REAL_ID, REAL_ID.upper()]),
    st.text(min_size=1, max_size=64),
)


def real(text: str, site: Site, csrf: str = "") -> str:
    return (
        text.replace(REAL_PREFIX, site.request.id[:8])
        .replace(REAL_ID, site.request.id)
        .replace(REAL_ID.upper(), site.request.id.upper())
        .replace(REAL_CSRF, csrf)
    )


users = st.one_of(st.text(max_size=20).filter(not_the_approver), st.just("U0MALLORY"))
action_ids = st.sampled_from(
    [blocks.APPROVE, blocks.DENY, blocks.ANSWER, blocks.ANSWER_INLINE, blocks.FULL, "x"]
)
slack_clicks = st.fixed_dictionaries(
    {
        "type": st.just("block_actions"),
        # The name is the approver's; the id, which is what counts, is not.
        "user": st.fixed_dictionaries({"id": users, "name": st.just(SLACK_APPROVER)}),
        "actions": st.lists(
            st.fixed_dictionaries(
                {"action_id": action_ids, "value": ids | json_values, "block_id": ids | json_values}
            ),
            max_size=3,
        ),
    },
    optional={
        "trigger_id": st.text(max_size=20) | json_values,
        "response_url": st.sampled_from(["http://127.0.0.1:9/x", "javascript:alert(1)", ""]),
        "container": json_values,
        "channel": json_values,
    },
)
slack_submissions = st.fixed_dictionaries(
    {
        "type": st.just("view_submission"),
        "user": st.fixed_dictionaries({"id": users}),
        "view": st.fixed_dictionaries(
            {
                "callback_id": st.sampled_from([blocks.DENY_VIEW, blocks.ANSWER_VIEW, blocks.FULL_VIEW, "x"]),
                "private_metadata": ids | json_values,
                "state": json_values,
            }
        ),
    }
)
slack_payloads = st.one_of(
    slack_clicks, slack_submissions, st.dictionaries(st.text(max_size=12), json_values, max_size=6)
)
"""Interaction payloads close to real ones, from anyone but the approver, naming any request."""


@FUZZ
@given(
    kind=st.sampled_from(["raw", "unsigned payload", "signed payload", "signed raw"]),
    headers=extra_headers,
    raw=bodies,
    payload=slack_payloads,
    stamp=st.sampled_from([str(int(time.time())), "", "-1", "1e9", "0" * 13]),
    signature=st.text(max_size=70).map(lambda s: "v0=" + s.encode().hex()),
)
async def test_slack_events(
    site: Site,
    client: httpx.AsyncClient,
    kind: str,
    headers: dict[str, str],
    raw: bytes,
    payload: dict[str, Any],
    stamp: str,
    signature: str,
) -> None:
    body = raw if kind.endswith("raw") else real(slack_form_body(payload).decode(), site).encode()
    if kind.startswith("signed"):
        headers.update(sign_slack_body(body, SLACK_SECRET))
    else:
        headers.update({"x-slack-request-timestamp": stamp, "x-slack-signature": signature})
    response = await send(client, "POST", "/slack/events", content=body, headers=headers)
    if not kind.startswith("signed"):
        assert response.status_code in (400, 401), response.text  # 400: not UTF-8, or a bad Content-Length
    await still_untouched(site)


# -- /email/inbound/{provider} -------------------------------------------------------------------

mail_fields = st.dictionaries(
    st.sampled_from(
        [
            "from",
            "sender",
            "recipient",
            "to",
            "body-plain",
            "stripped-text",
            "message-headers",
            "text",
            "headers",
            "envelope",
            "dkim",
            "SPF",
            "subject",
            "x",
        ]
    ),
    st.one_of(st.text(max_size=200), json_values.map(json.dumps)),
    max_size=8,
)


def mailgun_signature() -> dict[str, str]:
    timestamp, token = str(int(time.time())), secrets.token_hex(25)
    signature = hmac.new(EMAIL_SECRET.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": signature}


def basic_auth(password: str) -> str:
    return "Basic " + base64.b64encode(f"inbound:{password}".encode()).decode()


postmark_payloads = st.dictionaries(
    st.sampled_from(
        [
            "From",
            "FromFull",
            "ToFull",
            "CcFull",
            "OriginalRecipient",
            "MailboxHash",
            "TextBody",
            "StrippedTextReply",
            "Headers",
        ]
    ),
    json_values,
    max_size=9,
)
generic_payloads = st.dictionaries(
    st.sampled_from(["from", "to", "text", "headers"]), json_values, max_size=4
)


@FUZZ
@given(
    provider=st.sampled_from(PROVIDERS),
    authentic=st.booleans(),
    shape=st.sampled_from(["form", "multipart", "json", "raw"]),
    fields=mail_fields,
    postmark=postmark_payloads,
    generic=generic_payloads,
    raw=bodies,
    content_type=content_types,
    headers=extra_headers,
)
async def test_email_inbound(
    site: Site,
    client: httpx.AsyncClient,
    provider: str,
    authentic: bool,
    shape: str,
    fields: dict[str, str],
    postmark: dict[str, Any],
    generic: dict[str, Any],
    raw: bytes,
    content_type: str,
    headers: dict[str, str],
) -> None:
    url = f"/email/inbound/{provider}"
    if authentic and provider in ("postmark", "sendgrid"):
        headers["authorization"] = basic_auth(EMAIL_SECRET)
    if shape in ("form", "multipart") and provider in ("mailgun", "sendgrid"):
        if authentic and provider == "mailgun":
            fields.update(mailgun_signature())
        if shape == "multipart":
            files = {name: (None, value) for name, value in fields.items()}
            response = await send(client, "POST", url, files=files, headers=headers)
        else:
            response = await send(client, "POST", url, data=fields, headers=headers)
    else:
        body = raw
        if shape == "json" and provider in ("postmark", "generic"):
            body = json.dumps(postmark if provider == "postmark" else generic).encode()
        headers["content-type"] = content_type
        if authentic and provider == "generic":
            headers.update({k.lower(): v for k, v in sign_generic(body).items() if k != "Content-Type"})
        elif authentic and provider == "mailgun":
            body += b"&" + "&".join(f"{k}={v}" for k, v in mailgun_signature().items()).encode()
        response = await send(client, "POST", url, content=body, headers=headers)
    assert 400 <= response.status_code < 500
    await still_untouched(site)


# -- the web console's forms ---------------------------------------------------------------------

not_an_action = st.text(max_size=10).filter(lambda action: action not in ("approve", "deny", "answer"))


@FUZZ
@given(
    request_id=ids,
    headers=extra_headers,
    header_csrf=st.one_of(st.none(), st.sampled_from([REAL_CSRF, "", REAL_CSRF + "x", "forged"])),
    as_form=st.booleans(),
    form=st.fixed_dictionaries(
        {
            "csrf": st.sampled_from([REAL_CSRF, "", "forged"]),
            # A real action with the real id and CSRF token would be a genuine decision.
            "action": not_an_action,
            "comment": st.text(max_size=3000),
            "answer": st.text(max_size=300),
        }
    ),
    raw=bodies,
    content_type=content_types,
    method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
)
async def test_web_console_forms(
    site: Site,
    client: httpx.AsyncClient,
    csrf: str,
    request_id: str,
    headers: dict[str, str],
    header_csrf: str | None,
    as_form: bool,
    form: dict[str, str],
    raw: bytes,
    content_type: str,
    method: str,
) -> None:
    headers.pop("cookie", None)
    if header_csrf is not None:
        headers["x-csrf-token"] = real(header_csrf, site, csrf)
    if as_form:
        body = "&".join(f"{quote(k)}={quote(real(v, site, csrf), safe='')}" for k, v in form.items()).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    else:
        body = raw
        headers["content-type"] = content_type
    path = f"/approvals/requests/{quote(real(request_id, site), safe='')}"
    response = await send(client, method, path, content=body, headers=headers)
    shown = (200,) if method == "GET" else ()  # the request's full-call page: it decides nothing
    assert response.status_code in (*shown, 400, 403, 404, 405, 409, 415), response.text[:200]
    await still_untouched(site)


@FUZZ
@given(
    request_ids=st.lists(ids, max_size=5),
    headers=extra_headers,
    header_csrf=st.one_of(st.none(), st.sampled_from([REAL_CSRF, "", REAL_CSRF + "x", "forged"])),
    genuine_action=st.booleans(),
    action=not_an_action,
    csrf_field=st.sampled_from(["", "forged", REAL_CSRF + "x"]),
    extra=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=3),
    method=st.sampled_from(["POST", "POST", "GET", "PUT"]),
)
async def test_web_console_batch(
    site: Site,
    client: httpx.AsyncClient,
    csrf: str,
    request_ids: list[str],
    headers: dict[str, str],
    header_csrf: str | None,
    genuine_action: bool,
    action: str,
    csrf_field: str,
    extra: dict[str, str],
    method: str,
) -> None:
    # A genuine action comes with a forged CSRF token only: with the real one it would decide.
    headers.pop("cookie", None)
    fields = [("id", real(request_id, site)) for request_id in request_ids]
    if genuine_action:
        fields += [("action", "approve"), ("csrf", real(csrf_field, site, csrf))]
        headers.pop("x-csrf-token", None)
    else:
        fields += [("action", action), ("csrf", csrf)]
        if header_csrf is not None:
            headers["x-csrf-token"] = real(header_csrf, site, csrf)
    fields += list(extra.items())
    body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields).encode()
    headers["content-type"] = "application/x-www-form-urlencoded"
    response = await send(client, method, "/approvals/batch", content=body, headers=headers)
    assert response.status_code in (400, 403, 404, 405, 409, 415), response.text[:200]
    await still_untouched(site)


@FUZZ
@given(
    path=st.text(max_size=60),
    query=st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=3),
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]),
    headers=extra_headers,
    body=bodies,
)
async def test_any_path_without_a_session(
    site: Site,
    client: httpx.AsyncClient,
    path: str,
    query: dict[str, str],
    method: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    client.cookies.clear()
    for prefix in ("/", "/approvals/", "/email/", "/slack/"):
        await send(client, method, prefix + quote(path), params=query, headers=headers, content=body)
    await still_untouched(site)


# -- raw bytes at the real listener ----------------------------------------------------------------

tokens = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8)
raw_requests = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.builds(
        lambda method, path, version, headers, body, length: (
            f"{method} {path} {version}\r\n".encode("utf-8", "replace")
            + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            + (b"" if length is None else f"Content-Length: {length}\r\n".encode())
            + b"Connection: close\r\n\r\n"
            + body
        ),
        st.one_of(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS"]), tokens),
        st.one_of(
            st.sampled_from(
                [
                    "/slack/events",
                    "/email/inbound/mailgun",
                    "/email/inbound/generic",
                    "/approvals",
                    "/healthz",
                ]
            ),
            st.text(max_size=40),
        ),
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 extra", ""]),
        st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=200)), max_size=6),
        st.binary(max_size=400),
        st.one_of(st.none(), st.integers(min_value=-5, max_value=500), st.just(10**20)),
    ),
)


async def _first_answer(host: str, port: int, raw: bytes) -> bytes:
    """What the listener answers to ``raw`` within half a second (nothing: it waits for more)."""
    stream = await anyio.connect_tcp(host, port)
    received = b""
    try:
        await stream.send(raw)
        with anyio.move_on_after(0.5):
            while b"\r\n" not in received:
                received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        pass
    finally:
        await stream.aclose()
    return received


@settings(FUZZ, max_examples=60)
@given(raw=raw_requests)
async def test_raw_bytes_over_real_http(served: Site, raw: bytes) -> None:
    assert served.hl.url is not None
    host, port = served.hl.url.removeprefix("http://").rsplit(":", 1)
    with capture_logs() as logs:
        answer = await _first_answer(host, int(port), raw)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), answer[:100]
        assert int(status_line.split()[1]) < 500, answer[:200]
    assert not [entry for entry in logs if entry["event"] == "listener.error"]
    health = await _first_answer(host, int(port), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200"), health
    await still_untouched(served)


@pytest.fixture
async def served(fake_slack: FakeSlack, inbox: Inbox) -> AsyncIterator[Site]:
    """The embedded listener on a free port; once the fuzzing is over, the real click still decides."""
    async with serving(fake_slack, inbox, listen="127.0.0.1:0") as running:
        yield running
        async with httpx.AsyncClient(base_url=str(running.hl.url)) as client:
            await genuine_answer_still_works(running, client)


# -- a slack-bolt app with the Slack channel attached ---------------------------------------------


@pytest.fixture
async def bolt(fake_slack: FakeSlack) -> AsyncIterator[tuple[HumanLayer, httpx.AsyncClient, ApprovalRequest]]:
    """The user's Bolt app (its Starlette adapter, over ASGI) with our channel attached, and
    one approval waiting that only ``SLACK_APPROVER`` may decide."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    app = AsyncApp(token=BOT_TOKEN, signing_secret=SLACK_SECRET, client=client)
    channel = SlackChannel(bot_token=BOT_TOKEN, channel="C0APPROVALS", base_url=fake_slack.api_url)
    channel.attach(app)
    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    asgi = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    async with HumanLayer([channel], listen=None) as hl, anyio.create_task_group() as tg:

        @hl.require_approval(approvers=[SLACK_APPROVER])
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        tg.start_soon(wire, 5000)
        [request] = await wait_for_pending(hl, within=5)
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield hl, http, request
        tg.cancel_scope.cancel()


def as_slack_sends(payload: dict[str, Any]) -> dict[str, Any] | None:
    """``payload`` with the parts slack-bolt itself reads shaped as Slack always sends them
    (the channel and container, a modal's ``view.type``), or ``None`` for a shape bolt
    answers with a 500 before any listener runs, whoever's handlers are registered (a
    ``block_actions`` with no actions: its matcher reads ``actions[0]``). What only our
    handlers read (ids, values, texts, trigger ids, URLs) stays as hostile as drawn."""
    actions = payload.get("actions")
    if payload.get("type") == "block_actions":
        if not (isinstance(actions, list) and actions):
            return None
        where = {
            "channel": {"id": "C0APPROVALS"},
            "container": {"type": "message", "channel_id": "C0APPROVALS"},
        }
        return {**payload, **where}
    view = payload.get("view")
    return {**payload, "view": {"type": "modal", **view}} if isinstance(view, dict) else payload


@FUZZ
@given(payload=st.one_of(slack_clicks, slack_submissions).map(as_slack_sends).filter(bool))
async def test_bolt_attached_handlers(
    bolt: tuple[HumanLayer, httpx.AsyncClient, ApprovalRequest], payload: dict[str, Any] | None
) -> None:
    assert payload is not None
    hl, http, request = bolt
    text = slack_form_body(payload).decode().replace(REAL_PREFIX, request.id[:8]).replace(REAL_ID, request.id)
    body = text.encode()
    response = await send(
        http, "POST", "/slack/events", content=body, headers=sign_slack_body(body, SLACK_SECRET)
    )
    assert response.status_code < 500
    assert (await hl.get(request.id)).decision is None
