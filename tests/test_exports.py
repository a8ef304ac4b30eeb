"""The public names are exactly the documented ones."""

from __future__ import annotations

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
        "AuditEntry",
        "ChannelError",
        "ConfigurationError",
        "Decision",
        "HumanLayer",
        "HumanLayerError",
        "NotAnApprover",
        "OutcomeUnknown",
        "Status",
        "StoreError",
        "TooManyPending",
        "UnknownRequest",
        "__version__",
        "current_decision",
        "mask_secrets",
    }
    for name in humanlayer_async.__all__:
        assert hasattr(humanlayer_async, name), name


def test_subpackage_names() -> None:
    assert humanlayer_async.channels.__all__ == [
        "BaseChannel",
        "Channel",
        "ConsoleChannel",
        "Decider",
        "EmailChannel",
        "SlackChannel",
        "WebChannel",
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
        "sign_slack_body",
        "slack_block_actions",
        "slack_form_body",
        "slack_view_submission",
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
