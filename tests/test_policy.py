"""One declarative policy: which tools need approval and when, from Python or TOML, driving
``require_approval(policy=)`` and ``check_call`` (what the MCP proxy and the adapters use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from humanlayer_async import ConfigurationError, HumanLayer, NotAnApprover, Status
from humanlayer_async.channels import ConsoleChannel, WebChannel
from humanlayer_async.policy import Policy, Predicate, Rule
from humanlayer_async.testing import wait_for_pending

from .test_escalation import Recorder

pytestmark = pytest.mark.anyio

WHEN = 'default = "always"\n[[rules]]\ntool = "x"\napprove = "when"\n'
POLICY = """
default = "always"

[[rules]]
tool = "read_*"
approve = "never"

[[rules]]
tool = "transfer_money"
approve = "when"
when = [{ arg = "amount", gt = 1000 }, { arg = "recipient", not_in = ["acme"] }]
approvers = ["cfo@company.com"]
timeout = 60
channels = ["finance"]
editable = ["amount"]

[[rules]]
tool = "delete_*"
approvals = 2
approvers = ["alice", "bob"]
"""


def test_the_first_matching_rule_wins_and_the_default_covers_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = Policy.from_toml(path)
    assert Policy.from_toml(POLICY).rules == policy.rules  # the text itself works too
    assert policy.requires("read_file", {}) is None
    transfer = policy.rule_for("transfer_money")
    assert transfer.options == {
        "approvers": ("cfo@company.com",),
        "approvals": 1,
        "timeout": 60.0,
        "editable": ("amount",),
    }
    assert transfer.channels == ("finance",)
    assert policy.requires("transfer_money", {"amount": 50, "recipient": "bob"}) is None
    assert policy.requires("transfer_money", {"amount": 5000, "recipient": "acme"}) is None
    assert policy.requires("transfer_money", {"amount": 5000, "recipient": "bob"}) is transfer
    assert policy.requires("delete_everything", {}) is not None
    fallback = policy.requires("send_email", {"to": "x"})
    assert fallback is not None and fallback.tool == "*"
    assert Policy([], default="never").requires("send_email", {}) is None


def test_a_predicate_that_cannot_be_evaluated_requires_approval() -> None:
    rule = Rule("pay", "when", (Predicate("amount", "gt", 100),))
    assert rule.requires({"amount": 5}) is False
    for unclear in ({}, {"amount": "lots"}, {"amount": None}, {"amount": True}, {"amount": float("nan")}):
        assert rule.requires(unclear) is True, unclear  # fails closed
    text = Rule("email", "when", (Predicate("to", "matches", r".*@company\.com"),))
    assert text.requires({"to": "a@company.com"}) and not text.requires({"to": "a@company.com.evil"})
    assert text.requires({"to": 42})  # not text: asks
    kinds = Rule("flag", "when", (Predicate("on", "eq", 1),))
    assert kinds.requires({"on": 1}) and kinds.requires({"on": 1.0}) and not kinds.requires({"on": True})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[rules]]\ntool = "x"', "default"),
        ('default = "sometimes"', "default must be"),
        ('default = "always"\n[[rules]]\ntool = "x"\napprove = "maybe"', "approve must be"),
        (
            'default = "always"\n[[rules]]\ntool = "x"\naprovers = ["a"]',
            "rule 1 ('x'): unknown key 'aprovers'",
        ),
        ('default = "always"\n[[rules]]\napprove = "never"', "rule 1 names no tool"),
        (
            'default = "always"\n[[rules]]\ntool = "x"\napprove = "when"',
            'approve = "when" goes with predicates',
        ),
        ('default = "always"\n[[rules]]\ntool = "x"\nwhen = [{ arg = "a", gt = 1 }]', 'approve = "when"'),
        (
            'default = "always"\n[[rules]]\ntool = "x"\napprove = "when"\nwhen = [{ arg = "a", eval = "1" }]',
            "eval",
        ),
        (
            WHEN + 'when = [{ arg = "a", gt = 1, lt = 5 }]',
            "2 operators",
        ),
        (
            'default = "always"\n[[rules]]\ntool = "x"\napprove = "when"\nwhen = [{ arg = "a", in = "ab" }]',
            "takes a list",
        ),
        (
            WHEN + 'when = [{ arg = "a", matches = "(" }]',
            "regular expression",
        ),
        ('default = "always"\n[[rules]]\ntool = "x"\napprovals = 0', "approvals"),
        ('default = "always"\n[[rules]]\ntool = "x"\ntimeout = -5', "timeout"),
        ('default = "always"\nrule = []', "unknown policy keys: rule"),
        ("default = ", "not valid TOML"),
    ],
)
def test_a_policy_is_checked_when_loaded_and_errors_name_the_rule_and_the_key(text: str, error: str) -> None:
    with pytest.raises(
        ConfigurationError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        Policy.from_toml(text + "\n")


def test_a_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the policy"):
        Policy.from_toml(tmp_path / "nope.toml")


async def test_require_approval_takes_the_rule_for_the_tools_name() -> None:
    ops = Recorder("slack")
    finance = WebChannel(token="policy-web-key-0123456789", label="finance")
    policy = Policy.from_toml(POLICY)
    async with HumanLayer([ops, finance], listen=None) as hl:

        @hl.require_approval(policy=policy)
        async def read_file(path: str) -> str:
            return f"read {path}"

        @hl.require_approval(policy=policy)
        async def transfer_money(amount: int, recipient: str) -> str:
            return f"sent {amount} to {recipient}"

        assert await read_file("a.txt") == "read a.txt"  # "never": not even wrapped
        assert await transfer_money(10, "bob") == "sent 10 to bob"  # the rule's condition
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await transfer_money(9000, "bob"))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            assert request.approvers == ("cfo@company.com",)
            assert (request.expires_at - request.created_at).total_seconds() == pytest.approx(60)
            assert request.editable is not None and set(request.editable) == {"amount"}
            assert ops.sent == []  # the rule's channels, by label: only the finance console
            with pytest.raises(NotAnApprover):
                await hl.decide(request.id, True, by="intern")
            await hl.decide(request.id, True, by="cfo@company.com", edits={"amount": 8000})
        assert results == ["sent 8000 to bob"]


def test_policy_and_the_options_it_sets_do_not_mix_and_labels_must_exist() -> None:
    policy = Policy.from_toml(POLICY)
    hl = HumanLayer([ConsoleChannel(label="ops", input=0)], listen=None)
    with pytest.raises(ConfigurationError, match="policy= says approvers, timeout"):
        hl.require_approval(policy=policy, approvers=["x"], timeout=5)

    async def transfer_money(amount: int, recipient: str) -> str:
        return ""

    with pytest.raises(ConfigurationError, match="labelled finance; there are: ops"):
        hl.require_approval(policy=policy)(transfer_money)
    with pytest.raises(ConfigurationError, match="label must be a non-empty string"):
        WebChannel(token="policy-web-key-0123456789", label=" ")


async def test_check_call_asks_about_a_tool_it_did_not_write() -> None:
    policy = Policy.from_toml(POLICY)
    async with HumanLayer([], listen=None) as hl:
        assert await hl.check_call("read_file", {"path": "x"}, policy=policy) is None
        async with anyio.create_task_group() as tg:
            decisions: list[Any] = []

            async def call(name: str, arguments: dict[str, Any]) -> None:
                decisions.append(
                    await hl.check_call(
                        name,
                        arguments,
                        policy=policy,
                        qualname=f"files/{name}",
                        schemas={"path": {"type": "string"}},
                    )
                )

            tg.start_soon(call, "delete_file", {"path": "/etc/passwd", "api_key": "sk-live-1"})
            [request] = await wait_for_pending(hl)
            assert (request.function, request.tool, request.approvals) == (
                "delete_file",
                "files/delete_file",
                2,
            )
            assert request.kwargs["api_key"] == "***"  # shown as render shows it
            assert await hl.decide(request.id, True, by="alice") is None
            await hl.decide(request.id, False, by="bob", comment="never /etc")
        [decision] = decisions
        assert decision.status is Status.DENIED and decision.comment == "never /etc"
