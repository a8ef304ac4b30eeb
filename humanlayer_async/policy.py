"""One policy for every tool: which need a human's approval, and when.

Written once, in Python or TOML, it drives ``hl.require_approval(policy=...)``,
``hl.check_call`` (what the MCP proxy and the framework adapters use for tools you did not
write)::

    default = "always"            # what a tool no rule names gets: required, no silent fail open

    [[rules]]
    tool = "read_*"               # an exact name, or a glob
    approve = "never"

    [[rules]]
    tool = "transfer_money"
    approve = "when"              # when every predicate holds
    when = [{ arg = "amount", gt = 1000 }, { arg = "recipient", not_in = ["acme"] }]
    approvers = ["cfo@company.com"]
    approvals = 1
    timeout = 3600
    channels = ["finance-slack"]  # channel labels
    editable = ["amount"]

The first rule whose ``tool`` matches wins. Predicates compare one argument each: ``eq``,
``ne``, ``gt``, ``ge``, ``lt``, ``le``, ``in``, ``not_in``, ``matches`` (a regular
expression that must match the whole text); nothing is evaluated. A predicate that cannot be
evaluated (the argument missing, a type that does not compare) requires approval: a policy
fails closed. Unknown keys are errors naming the rule and the key.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

from ._durations import seconds
from ._exceptions import ConfigurationError

__all__ = ["Policy", "Predicate", "Rule"]

Approve = Literal["always", "never", "when"]

_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "matches")
_RULE_KEYS = frozenset(
    {"tool", "approve", "when", "approvers", "approvals", "timeout", "channels", "editable"}
)


@dataclass(frozen=True, slots=True)
class Predicate:
    """``arg`` compared by ``op`` with ``value``: ``Predicate("amount", "gt", 1000)``."""

    arg: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.arg, str) or not self.arg:
            raise ConfigurationError(f'a predicate names an argument (arg = "..."), not {self.arg!r}')
        if self.op not in _OPERATORS:
            raise ConfigurationError(
                f"predicate on {self.arg!r}: unknown operator {self.op!r} (one of {', '.join(_OPERATORS)})"
            )
        if self.op in ("in", "not_in") and (
            isinstance(self.value, str | bytes) or not isinstance(self.value, list | tuple)
        ):
            raise ConfigurationError(f"predicate on {self.arg!r}: {self.op} takes a list, not {self.value!r}")
        if self.op == "matches":
            if not isinstance(self.value, str):
                raise ConfigurationError(f"predicate on {self.arg!r}: matches takes a regular expression")
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ConfigurationError(
                    f"predicate on {self.arg!r}: bad regular expression: {exc}"
                ) from None

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        """Whether it holds for ``arguments``; ``LookupError``/``TypeError`` when it cannot say."""
        value = arguments[self.arg]
        op, wanted = self.op, self.value
        if op == "eq":
            return _same(value, wanted)
        if op == "ne":
            return not _same(value, wanted)
        if op == "in":
            return any(_same(value, item) for item in wanted)
        if op == "not_in":
            return not any(_same(value, item) for item in wanted)
        if op == "matches":
            if not isinstance(value, str):
                raise TypeError(f"{self.arg} is not text")
            return re.fullmatch(wanted, value) is not None
        if isinstance(value, bool) or not isinstance(value, int | float) or isinstance(wanted, bool):
            raise TypeError(f"{self.arg} is not a number")
        if isinstance(value, float) and math.isnan(value):
            raise TypeError(f"{self.arg} is not a number")
        compared: dict[str, bool] = {
            "gt": value > wanted,
            "ge": value >= wanted,
            "lt": value < wanted,
            "le": value <= wanted,
        }
        return compared[op]


def _same(value: Any, wanted: Any) -> bool:
    """Equal, type for type: ``True`` is not ``1``, ``1`` and ``1.0`` are one number."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    return bool(value == wanted)


@dataclass(frozen=True, slots=True)
class Rule:
    """What a policy says of the tools ``tool`` names (an exact name or a glob)."""

    tool: str
    approve: Approve = "always"
    when: tuple[Predicate, ...] = ()
    approvers: tuple[str, ...] = ()
    approvals: int = 1
    timeout: float | None = None
    channels: tuple[str, ...] | None = None
    """Channel labels (``label=`` on a channel); ``None``: the ``HumanLayer``'s channels."""
    editable: bool | tuple[str, ...] = False

    def __post_init__(self) -> None:
        where = f"rule for {self.tool!r}"
        if not isinstance(self.tool, str) or not self.tool:
            raise ConfigurationError(f'a rule names its tool (tool = "name" or a glob), not {self.tool!r}')
        if self.approve not in ("always", "never", "when"):
            raise ConfigurationError(
                f'{where}: approve must be "always", "never" or "when", not {self.approve!r}'
            )
        if (self.approve == "when") != bool(self.when):
            raise ConfigurationError(
                f'{where}: approve = "when" goes with predicates (when = [...]), and only it'
            )
        if isinstance(self.approvals, bool) or not isinstance(self.approvals, int) or self.approvals < 1:
            raise ConfigurationError(f"{where}: approvals must be a whole number of at least 1")
        if not all(isinstance(a, str) and a for a in self.approvers):
            raise ConfigurationError(f"{where}: approvers are non-empty strings")
        if self.channels is not None and not all(isinstance(c, str) and c for c in self.channels):
            raise ConfigurationError(f"{where}: channels are channel labels (strings)")

    def matches(self, tool: str) -> bool:
        return fnmatch.fnmatchcase(tool, self.tool)

    def requires(self, arguments: Mapping[str, Any]) -> bool:
        """Whether a call with ``arguments`` needs a human: ``"when"`` rules fail closed."""
        if self.approve != "when":
            return self.approve == "always"
        try:
            return all(predicate.holds(arguments) for predicate in self.when)
        except (LookupError, TypeError, ValueError):
            return True

    @property
    def options(self) -> dict[str, Any]:
        """The ``require_approval`` options this rule sets (channels by label aside)."""
        return {
            "approvers": self.approvers,
            "approvals": self.approvals,
            "timeout": self.timeout,
            "editable": self.editable,
        }


class Policy:
    """Rules, first match wins, and what a tool none of them names gets (``default``)."""

    def __init__(self, rules: Iterable[Rule | Mapping[str, Any]] = (), *, default: Approve) -> None:
        if default not in ("always", "never"):
            raise ConfigurationError(f'a policy\'s default must be "always" or "never", not {default!r}')
        self.rules = tuple(r if isinstance(r, Rule) else _rule(r, n) for n, r in enumerate(rules, 1))
        self.default = default
        self._fallback = Rule("*", default)

    def __repr__(self) -> str:
        return f"Policy({len(self.rules)} rules, default={self.default!r})"

    @classmethod
    def from_toml(cls, source: str | os.PathLike[str]) -> Policy:
        """A policy from a TOML file's path (or, for a ``str`` holding a newline, its text)."""
        if isinstance(source, str) and "\n" in source:
            text, where = source, "the policy"
        else:
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot read the policy {path}: {exc.strerror}") from None
            where = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{where} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from TOML's shape: ``{"default": ..., "rules": [{...}, ...]}``."""
        unknown = set(data) - {"default", "rules"}
        if unknown:
            raise ConfigurationError(f"unknown policy keys: {', '.join(sorted(unknown))} (default, rules)")
        if "default" not in data:
            raise ConfigurationError('a policy says what unnamed tools get: default = "always" or "never"')
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise ConfigurationError("rules is a list of tables ([[rules]])")
        return cls(rules, default=data["default"])

    def rule_for(self, tool: str) -> Rule:
        """The first rule that names ``tool``, else the default's."""
        return next((rule for rule in self.rules if rule.matches(tool)), self._fallback)

    def requires(self, tool: str, arguments: Mapping[str, Any]) -> Rule | None:
        """The rule that makes a call of ``tool`` with ``arguments`` need a human, or ``None``."""
        rule = self.rule_for(tool)
        return rule if rule.requires(arguments) else None


def _rule(data: Mapping[str, Any], number: int) -> Rule:
    """Rule ``number`` (from 1) of a TOML or dict policy, every key checked."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"rule {number} is a table of keys, not {data!r}")
    name = f"rule {number} ({data.get('tool', '?')!r})"
    unknown = set(data) - _RULE_KEYS
    if unknown:
        raise ConfigurationError(
            f"{name}: unknown key {', '.join(sorted(map(repr, unknown)))}"
            f" (one of {', '.join(sorted(_RULE_KEYS))})"
        )
    if "tool" not in data:
        raise ConfigurationError(f'rule {number} names no tool (tool = "name" or a glob)')
    when = data.get("when", ())
    if not isinstance(when, list | tuple):
        raise ConfigurationError(f"{name}: when is a list of predicates")
    timeout = data.get("timeout")
    try:
        return Rule(
            tool=data["tool"],
            approve=cast(Approve, data.get("approve", "always")),
            when=tuple(_predicate(p, name) for p in when),
            approvers=_strings(data.get("approvers", ()), f"{name}: approvers"),
            approvals=data.get("approvals", 1),
            timeout=None
            if timeout is None
            else seconds(cast(float | timedelta, timeout), f"{name}: timeout"),
            channels=None if "channels" not in data else _strings(data["channels"], f"{name}: channels"),
            editable=_editable(data.get("editable", False), name),
        )
    except ConfigurationError as exc:
        message = str(exc)
        raise ConfigurationError(message if message.startswith(name) else f"{name}: {message}") from None


def _predicate(data: Any, rule: str) -> Predicate:
    if not isinstance(data, Mapping) or "arg" not in data:
        raise ConfigurationError(f'{rule}: each predicate is {{ arg = "name", <operator> = value }}')
    operators = [key for key in data if key != "arg"]
    if len(operators) != 1:
        raise ConfigurationError(
            f"{rule}: predicate on {data['arg']!r} has {len(operators)} operators:"
            f" give one of {', '.join(_OPERATORS)}"
        )
    return Predicate(data["arg"], operators[0], data[operators[0]])


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(v, str) and v for v in items):
        raise ConfigurationError(f"{what} are non-empty strings, not {value!r}")
    return tuple(items)


def _editable(value: Any, rule: str) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    return _strings(value, f"{rule}: editable")
