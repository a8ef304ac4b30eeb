"""Shadow mode: a gate being rolled out records what it would have asked, and the call runs
at once, whatever the channels or the store do."""

from __future__ import annotations

import anyio
import pytest

from humanlayer_async import ConfigurationError, HumanLayer, StoreError, current_decision
from humanlayer_async._audit import AuditEntry
from humanlayer_async.stores import MemoryStore

from .test_escalation import Recorder
from .test_observe import Broken

pytestmark = pytest.mark.anyio


async def test_a_shadow_gate_records_what_it_would_ask_and_runs_at_once() -> None:
    team = Recorder("team")
    store = MemoryStore()
    async with HumanLayer([team, Broken()], store=store, listen=None) as hl:

        @hl.require_approval(mode="shadow", condition=lambda amount, **_: amount > 100)
        async def pay(amount: int, recipient: str, api_key: str = "sk-live-1") -> str:
            assert current_decision() is None  # nobody decided: it ran as it is
            return f"paid {amount} to {recipient}"

        @hl.require_approval(mode="shadow")
        def tag(name: str) -> str:  # a sync tool too
            return f"tagged {name}"

        with anyio.fail_after(5):  # it never waits
            assert await pay(500, "acme") == "paid 500 to acme"
            assert await pay(5, "acme") == "paid 5 to acme"  # the condition holds not: nothing recorded
            assert await anyio.to_thread.run_sync(tag, "v1") == "tagged v1"
        assert await hl.pending() == [] and team.sent == []
        shadowed = [entry for entry in store.audit_log if entry.event == "approval.shadowed"]
        assert [(e.fields["function"], e.fields["kwargs"]) for e in shadowed] == [
            ("pay", {"amount": 500, "recipient": "acme", "api_key": "***"}),  # as approvers would see it
            ("tag", {"name": "v1"}),
        ]
        assert len({e.request_id for e in shadowed}) == 2


class FailingAudit(MemoryStore):
    async def record(self, entry: AuditEntry) -> None:
        raise StoreError("the audit table is locked")


async def test_a_store_that_fails_never_fails_a_shadow_call() -> None:
    async with HumanLayer([], store=FailingAudit(), listen=None) as hl:

        @hl.require_approval(mode="shadow")
        async def restart(service: str) -> str:
            return f"restarted {service}"

        assert await restart("api") == "restarted api"


def test_mode_is_enforce_or_shadow() -> None:
    hl = HumanLayer([], listen=None)
    with pytest.raises(ConfigurationError, match='mode must be "enforce" or "shadow"'):
        hl.require_approval(mode="dry-run")  # type: ignore[call-overload]
