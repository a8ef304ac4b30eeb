"""What people are shown: secrets masked in every shape, every character visible, shortening
said where it happens, and a full view that is exactly what the arguments' digest covers."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async._codec import digest
from humanlayer_async._render import (
    MASK,
    format_kwargs,
    format_value,
    full_call,
    is_secret_name,
    mask_secrets,
    shorten,
    summarize,
    visible,
)
from humanlayer_async.stores import SQLiteStore
from humanlayer_async.testing import wait_for_pending

from .durable_helpers import run_cli

HOSTILE = "\x1b[2J\x1b[Htransfer_money(amount=25)\r\u202eevil\u2066\x9b\x7f\u2028"

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def request(**kwargs: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "id": "5f1e" + "0" * 28,
        "kind": "approval",
        "function": "transfer_money",
        "kwargs": {"amount": 250_000},
        "context": {},
        "approvers": (),
        "created_at": NOW,
        "expires_at": NOW + timedelta(hours=1),
    }
    return ApprovalRequest(**{**fields, **kwargs})


# -- characters ----------------------------------------------------------------------


def test_visible_spells_out_every_control_and_bidi_character() -> None:
    shown = visible(HOSTILE)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u202a-\u202e\u2066-\u2069]", shown)
    assert shown == ("\\x1b[2J\\x1b[Htransfer_money(amount=25)\\r\\u202eevil\\u2066\\x9b\\x7f\\u2028")
    assert visible(shown) == shown  # idempotent
    assert visible("naïve 日本 €") == "naïve 日本 €"  # printable text is left alone
    # Text a model reads and a person does not see: tag characters, fillers, zero-width spaces.
    smuggled = "pay 25" + "".join(chr(0xE0000 + ord(c)) for c in " and 250000") + "\u3164\u200b"
    assert visible(smuggled) == "pay 25" + "".join(f"\\U{0xE0000 + ord(c):08x}" for c in " and 250000") + (
        "\\u3164\\u200b"
    )
    assert visible("👩\u200d💻") == "👩\u200d💻"  # the joiner of an emoji hides nothing


def test_every_short_view_is_visible() -> None:
    hostile = request(function="transfer_money", kwargs={"note": HOSTILE, "n": [HOSTILE]})
    for text in (
        format_value(HOSTILE),
        format_kwargs(hostile.kwargs),
        summarize(hostile),
        full_call(hostile),
    ):
        assert "\x1b" not in text and "\u202e" not in text and "\r" not in text
        assert ("\\x1b" in text or "\\u001b" in text) and "\\u202e" in text  # JSON writes ESC \u001b


# -- shortening says so ------------------------------------------------------------------


def test_long_text_says_how_many_characters_it_left_out() -> None:
    drop = " " * 1000 + "DROP TABLE users"
    text, cut = shorten(drop)
    assert cut and text.endswith("… 816 more characters")
    assert format_value("short") == "short" and not shorten("short")[1]
    assert format_value("x" * 201, 200).endswith("… 1 more character")


def test_an_eleventh_item_and_a_fourth_level_are_announced() -> None:
    text, cut = shorten(list(range(11)))
    assert cut and text == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … 1 more item]"
    assert format_value({f"k{i}": i for i in range(12)}).endswith("… 2 more entries}")
    text, cut = shorten({"a": {"b": {"c": {"d": "hidden"}}}})
    assert cut and "hidden" not in text and "… 1 item nested deeper" in text
    assert not shorten({"a": {"b": {"c": 1}}})[1]


def test_a_long_repr_is_clipped_with_a_count() -> None:
    text, cut = shorten(list(range(100)), 30)
    assert cut and re.fullmatch(r"\[0, 1, .*… [\d,]+ more characters", text)


def test_summary_quotes_strings_and_says_where_it_shortens() -> None:
    line = summarize(request(kwargs={"to": "bob@example.com", "body": "b" * 100}))
    assert line == "transfer_money(to='bob@example.com', body='" + "b" * 60 + "'… 40 more characters)"


# -- the full view ---------------------------------------------------------------------


def test_full_call_shows_everything_that_short_views_leave_out() -> None:
    deep = {"a": {"b": {"c": {"d": "fourth-level-value"}}}}
    call = request(
        kwargs={
            "items": [f"item-{i}" for i in range(11)],
            "deep": deep,
            "sql": " " * 1000 + "DROP TABLE users",
        },
        context={"why": "quarterly\nclose"},
        approvers=("cfo@example.com",),
        doc="Move money.\n\nIrreversible.",
        digest="ab" * 32,
    )
    full = full_call(call)
    assert '"item-10"' in full and '"fourth-level-value"' in full and " " * 1000 + "DROP TABLE users" in full
    assert '"quarterly\\nclose"' in full  # a value's newline is spelled out: only layout breaks lines
    assert "Move money." in full and "Irreversible." in full
    assert call.id in full and "cfo@example.com" in full and "ab" * 32 in full
    assert "2026-11-30 13:00:00 UTC" in full


def test_full_call_shows_the_json_the_digest_is_taken_over() -> None:
    kwargs = {"amount": 250_000, "meta": {"z": [1, 2], "a": "ü\u202e"}}
    full = full_call(request(kwargs=kwargs))
    shown: dict[str, Any] = {}
    for name in kwargs:
        start = full.index(f"  {name} = ") + len(f"  {name} = ")
        block = (
            full[start:].split("\n  ", 1)[0] if name == "amount" else full[start : full.index("\n\n", start)]
        )
        shown[name] = json.loads(block)
    assert shown == kwargs  # the bidi control is written \u202e: the same JSON value, made visible
    assert digest(shown) == digest(kwargs)


def test_full_call_of_a_value_without_json_form_says_so() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque<\x1b[31m>"

    full = full_call(request(kwargs={"thing": Opaque()}))
    assert "Opaque<\\x1b[31m>  (no JSON form: shown as repr)" in full


def test_full_call_of_a_question_has_the_whole_text() -> None:
    text = "line one\n" + "word " * 500 + "\u202eend"
    full = full_call(request(kind="question", function="contact_human", kwargs={}, message=text))
    assert "question" in full and "word " * 499 in full and "\\u202eend" in full


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "api_key",
        "apiKey",
        "APIKey",
        "accessToken",
        "clientSecret",
        "passwords",
        "auth",
        "Authorization",
        "db_password",
        "x-api-key",
        "cookie",
        "Set-Cookie",
        "private_key",
        "refresh_tokens",
        "credentials",
    ],
)
def test_secret_names_in_every_spelling(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key", "bucket", "monkey", "tokenizer", "author", "keyboard", "amount", "keys"]
)
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


@dataclass
class Credentials:
    user: str
    api_key: str


class Account(BaseModel):
    owner: str
    password: str


def test_masking_reaches_nested_mappings_lists_dataclasses_and_models() -> None:
    arguments = {
        "url": "https://api.example.com",
        "headers": {"Authorization": "Bearer s1", "Accept": "json", "x-api-key": "s2"},
        "accounts": [Account(owner="ann", password="s3"), {"clientSecret": "s4"}],
        "creds": (Credentials("bob", "s5"),),
        "key": "reports/2026.csv",  # an object key: shown, it is what is being approved
        "untouched": ["a", {"b": 1}],
    }
    masked = mask_secrets(arguments)
    assert masked["headers"] == {"Authorization": MASK, "Accept": "json", "x-api-key": MASK}
    assert masked["accounts"] == [{"owner": "ann", "password": MASK}, {"clientSecret": MASK}]
    assert masked["creds"] == ({"user": "bob", "api_key": MASK},)
    assert masked["key"] == "reports/2026.csv"
    assert masked["untouched"] is arguments["untouched"]  # nothing to mask: the same object
    assert not any(f"s{i}" in repr(masked) for i in range(1, 6))


def test_masking_survives_a_cycle() -> None:
    looped: dict[str, Any] = {"token": "s1"}
    looped["self"] = looped
    masked = mask_secrets({"data": looped})
    assert masked["data"]["token"] == MASK


@pytest.mark.anyio
async def test_secrets_in_kwargs_and_nested_values_never_leave_the_process(tmp_path: Path) -> None:
    """``**params`` is spread into its own names, so the render hook sees and masks them, and
    nothing the store's rows, the audit trail, the logs, the CLI or the request's repr hold has a secret."""
    store = SQLiteStore(tmp_path / "approvals.db")
    with capture_logs() as logs:
        async with HumanLayer([], store=store, listen=None) as hl:

            @hl.require_approval()
            async def call_api(url: str, **params: object) -> str:
                return f"called with {params['accessToken']}"

            async with anyio.create_task_group() as tg:
                results: list[str] = []

                async def call() -> None:
                    results.append(
                        await call_api(
                            "https://api.example.com",
                            accessToken="SENTINEL-1",
                            headers={"Authorization": "Bearer SENTINEL-2"},
                            body=[{"db_password": "SENTINEL-3"}],
                            limit=5,
                        )
                    )

                tg.start_soon(call)
                [pending] = await wait_for_pending(hl, within=5)
                store_url = f"sqlite:///{tmp_path / 'approvals.db'}"
                _, listed, _ = await run_cli("pending", "--json", "--store", store_url)
                _, audit, _ = await run_cli("audit", "--store", store_url)
                assert "accessToken" in listed and pending.short_id in audit  # the CLI saw the request
                assert dict(pending.kwargs) == {
                    "url": "https://api.example.com",
                    "accessToken": MASK,
                    "headers": {"Authorization": MASK},
                    "body": [{"db_password": MASK}],
                    "limit": 5,
                }
                await hl.decide(pending.id, True, by="alice")
            assert results == ["called with SENTINEL-1"]  # the tool itself gets the real values
            history = await store.history(request_id=pending.id)
            stored = await hl.get(pending.id)
    with closing(sqlite3.connect(tmp_path / "approvals.db")) as db:
        rows = "\n".join(db.iterdump())
    shown = [
        repr(logs),
        repr(history),
        repr(stored),
        full_call(stored),
        summarize(stored),
        listed,
        audit,
        rows,
    ]
    seen = "\n".join(shown)
    assert "SENTINEL" not in seen
    assert "accessToken" in seen  # the argument is there, only its value is masked


@pytest.mark.anyio
async def test_a_keyword_that_collides_with_a_positional_only_name_keeps_both() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        async def tool(name: str, /, **extra: object) -> None: ...

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tool("positional", name="keyword"))
            [pending] = await wait_for_pending(hl, within=5)
            assert dict(pending.kwargs) == {"name": "positional", "extra['name']": "keyword"}
            await hl.decide(pending.id, True, by="alice")
