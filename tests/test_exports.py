"""The public names are exactly the documented ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import humanlayer_async
import humanlayer_async.channels
import humanlayer_async.stores
import humanlayer_async.testing


def test_top_level_names() -> None:
    assert humanlayer_async.__all__ == sorted(humanlayer_async.__all__)
    assert set(humanlayer_async.__all__) == {
        "AlreadyExecuted",
        "ApprovalDenied",
        "ApprovalRequest",
        "ApprovalTimeout",
        "ArgumentsChanged",
        "ArgumentsEdited",
        "AuditEntry",
        "ChannelError",
        "ConfigurationError",
        "Decision",
        "Escalation",
        "Grant",
        "HumanLayer",
        "HumanLayerError",
        "InvalidEdit",
        "NotAnApprover",
        "OutcomeUnknown",
        "Principal",
        "Status",
        "StoreError",
        "TooManyPending",
        "UnknownGrant",
        "UnknownRequest",
        "Vote",
        "__version__",
        "current_decision",
        "mask_secrets",
    }
    for name in humanlayer_async.__all__:
        assert hasattr(humanlayer_async, name), name


def test_subpackage_names() -> None:
    assert humanlayer_async.channels.__all__ == [
        "Answered",
        "ApiChannel",
        "BaseChannel",
        "Channel",
        "ConsoleChannel",
        "Decider",
        "EmailChannel",
        "Principal",
        "SlackChannel",
        "WebChannel",
        "WebhookChannel",
    ]
    assert humanlayer_async.stores.__all__ == [
        "DurableStore",
        "MemoryStore",
        "PostgresStore",
        "SQLiteStore",
        "Store",
        "StoreEvent",
        "store_from_url",
    ]
    assert humanlayer_async.testing.__all__ == [
        "AutoChannel",
        "Rule",
        "api_client",
        "sign_slack_body",
        "slack_block_actions",
        "slack_form_body",
        "slack_view_submission",
        "wait_for_pending",
    ]


def test_exception_tree() -> None:
    from humanlayer_async import (
        AlreadyExecuted,
        ApprovalDenied,
        ApprovalTimeout,
        ArgumentsChanged,
        ChannelError,
        ConfigurationError,
        HumanLayerError,
        NotAnApprover,
        OutcomeUnknown,
        StoreError,
        TooManyPending,
        UnknownRequest,
    )

    assert issubclass(ApprovalTimeout, ApprovalDenied)
    for error in (
        ApprovalDenied,
        UnknownRequest,
        NotAnApprover,
        ConfigurationError,
        ChannelError,
        StoreError,
        AlreadyExecuted,
        OutcomeUnknown,
        ArgumentsChanged,
        TooManyPending,
    ):
        assert issubclass(error, HumanLayerError)


# -- what importing costs ------------------------------------------------------------------------

# The channels', stores' and listener's dependencies: loaded when they are used, never by
# `import humanlayer_async` (benchmarks/import_time.py measures what the import costs).
HEAVY = ("slack_sdk", "slack_bolt", "aiohttp", "aiosmtplib", "uvicorn", "asyncpg", "starlette", "httpx")


def _loaded_after(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; which of ``HEAVY`` each ``mark(label)`` found loaded."""
    prelude = (
        "import json, sys\n"
        "seen = {}\n"
        "def mark(label):\n"
        f"    seen[label] = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code) + "\nprint(json.dumps(seen))"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded: dict[str, list[str]] = json.loads(completed.stdout.splitlines()[-1])
    return loaded


def test_import_loads_no_channel_store_or_listener_dependency() -> None:
    loaded = _loaded_after(
        """
        import humanlayer_async
        from humanlayer_async import HumanLayer
        import humanlayer_async.channels, humanlayer_async.stores, humanlayer_async.testing
        mark("import")
        from humanlayer_async.channels import BaseChannel, Channel, ConsoleChannel, Decider
        from humanlayer_async.stores import MemoryStore, PostgresStore, SQLiteStore, store_from_url
        mark("console and stores")
        """
    )
    assert loaded == {"import": [], "console and stores": []}


def test_a_gated_call_without_routes_never_loads_the_listener() -> None:
    # A HumanLayer whose channels have no routes starts no listener, so it needs neither
    # starlette nor uvicorn; asking for its ASGI app (or serving it) loads them.
    loaded = _loaded_after(
        """
        import asyncio
        from humanlayer_async import HumanLayer
        from humanlayer_async.testing import AutoChannel

        async def main():
            async with HumanLayer([AutoChannel()], listen="127.0.0.1:0") as hl:
                @hl.require_approval()
                async def tool(x: int) -> int:
                    return x * 2
                assert await tool(21) == 42
                mark("after a gated call")
                hl.asgi_app
                mark("after asgi_app")

        asyncio.run(main())
        """
    )
    assert loaded["after a gated call"] == []
    assert {"starlette", "uvicorn"} <= set(loaded["after asgi_app"])


def test_a_channel_loads_its_own_dependencies_only() -> None:
    loaded = _loaded_after(
        """
        from humanlayer_async.channels import SlackChannel
        mark("slack")
        from humanlayer_async.channels import EmailChannel
        mark("email")
        """
    )
    assert "slack_sdk" in loaded["slack"] and "aiosmtplib" not in loaded["slack"]
    assert "aiosmtplib" in loaded["email"]


def test_without_asyncpg_everything_imports_and_postgres_names_the_extra() -> None:
    loaded = _loaded_after(
        """
        sys.modules["asyncpg"] = None  # as if the postgres extra were not installed
        from humanlayer_async import ConfigurationError, HumanLayer
        from humanlayer_async.stores import PostgresStore, store_from_url
        try:
            store_from_url("postgresql://db.example/app")
        except ConfigurationError as exc:
            mark(str(exc))
        """
    )
    assert list(loaded) == ["PostgresStore needs asyncpg: pip install 'humanlayer-async[postgres]'"]


def test_lazy_names_are_the_real_objects() -> None:
    from humanlayer_async.channels import slack, web
    from humanlayer_async.stores import postgres, url

    assert humanlayer_async.channels.SlackChannel is slack.SlackChannel
    assert humanlayer_async.channels.WebChannel is web.WebChannel
    assert humanlayer_async.stores.PostgresStore is postgres.PostgresStore
    assert humanlayer_async.stores.store_from_url is url.store_from_url
    for package in (humanlayer_async.channels, humanlayer_async.stores):
        assert set(package.__all__) <= set(dir(package))
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            package.Nope  # noqa: B018 - the attribute access is what is tested


def test_the_gates_own_methods_are_not_part_of_humanlayers_api() -> None:
    public = {name for name in dir(humanlayer_async.HumanLayer) if not name.startswith("_")}
    assert public.isdisjoint({"ask", "audit", "begin_execution", "finish_execution"})
    assert {"require_approval", "human_as_tool", "decide", "respond", "cancel", "get", "pending"} <= public
