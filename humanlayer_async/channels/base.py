"""The Channel protocol: how a request reaches people and how their answer comes back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, Unpack, runtime_checkable

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from .._audit import AuditEntry
from .._exceptions import ConfigurationError
from .._models import ApprovalRequest, Decision, Grant, Principal, Vote
from .._pages import Filters

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = [
    "Answered",
    "BaseChannel",
    "Channel",
    "Decider",
    "ListenerAware",
    "Principal",
    "channel_label",
    "check_label",
]


@dataclass(frozen=True, slots=True)
class Answered:
    """What one answer came to: the decision that stands, and whether it is this answer.

    ``stands`` is false when someone else decided first (or the request expired): the
    channel then tells its approver who did, instead of confirming their answer.
    ``decision`` is ``None`` (and ``stands`` true) when the answer is a vote that counted
    and the request still waits for more (``approvals=`` above one): ``votes`` are the
    votes so far, of the ``needed`` approvals.
    """

    decision: Decision | None
    stands: bool
    votes: tuple[Vote, ...] = ()
    needed: int = 1
    grant: Grant | None = None
    """The grant this answer gave (``decide(..., grant=)``), when it gave one."""


@runtime_checkable
class Decider(Protocol):
    """The narrow handle a channel gets to turn an answer into a decision.

    Every channel decides through it, so approver allowlists, first-decision-wins and
    the audit trail apply whatever the channel. ``by`` is who answers: a name, or a
    ``Principal`` when the channel knows them by more than one (a Slack user id and
    their email, the user groups they belong to).
    """

    async def decide(
        self,
        request_id: str,
        approved: bool,
        *,
        by: str | Principal,
        comment: str | None = None,
        via: str,
        edits: Mapping[str, Any] | None = None,
        grant: float | None = None,
        seen: str | None = None,
    ) -> Answered:
        """Decide a request: the decision that stands, and whether it is this one.

        ``grant`` (seconds) with an approval also allows the same call for that long.
        ``seen``: the ``fingerprint`` of the request as the channel showed it (with its
        buttons, in its form): an answer to a call edited since raises ``ArgumentsEdited``.
        Channels that show a call pass it."""
        ...

    async def respond(self, request_id: str, text: str, *, by: str | Principal, via: str) -> Answered:
        """Answer a question: the decision that stands, and whether it is this answer."""
        ...

    async def get(self, request_id: str) -> ApprovalRequest:
        """One request, with its decision once decided."""
        ...

    async def pending(
        self, *, after: str | None = None, limit: int | None = None, **filters: Unpack[Filters]
    ) -> list[ApprovalRequest]:
        """The requests still waiting for a human, oldest first, filtered and paged as
        ``Store.list_pending`` does (the next page: ``after=page[-1].id``)."""
        ...

    async def count_pending(self, **filters: Unpack[Filters]) -> int:
        """How many requests ``pending`` with these filters lists, all pages."""
        ...

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """Claim ``key`` in the store until ``expires_at``: ``True`` once, in the whole fleet."""
        ...

    async def grants(self, *, active: bool = True) -> list[Grant]:
        """The live grants (``active=False``: every one the store keeps)."""
        ...

    async def confirm_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Give a grant that needs several approvers as one more of them."""
        ...

    async def revoke_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Revoke a grant as ``by`` (one who may approve its tool)."""
        ...

    async def history(
        self, *, since: datetime | None = None, request_id: str | None = None
    ) -> list[AuditEntry]:
        """The audit trail from ``since`` on (of one request), oldest first (the stats, the API)."""
        ...


@runtime_checkable
class Channel(Protocol):
    """Delivers requests to people and updates what it delivered once decided.

    ``name`` is what decisions made through the channel record as ``via``.
    """

    name: str

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Serve the channel's inbound side until cancelled.

        Called once when the ``HumanLayer`` starts, in its task group; call
        ``task_status.started()`` once ready to take answers.
        """
        ...

    async def send(self, request: ApprovalRequest) -> str | None:
        """Deliver a new request; return a reference to what was sent (or ``None``).

        Raise ``ChannelError`` when it cannot be delivered after the channel's own retries.
        """
        ...

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        """Show the outcome (``request.decision``) where the request was delivered."""
        ...

    def routes(self) -> Sequence[BaseRoute]:
        """Starlette routes the listener serves for this channel's callbacks."""
        ...

    async def aclose(self) -> None:
        """Release what the channel holds (HTTP clients, connections)."""
        ...


@runtime_checkable
class ListenerAware(Protocol):
    """A channel that wants to know where the embedded listener serves its routes."""

    def listening(self, url: str) -> None:
        """Called once the listener serves at ``url`` (e.g. ``http://127.0.0.1:8787``)."""
        ...


class BaseChannel:
    """Defaults for a channel that only sends: no inbound side, no routes, no updates.

    Subclass it and implement ``send``; override the rest as the channel needs.
    """

    name = "channel"
    label = "channel"
    """What a policy names the channel by (``label=`` where the channel takes it; its ``name``
    otherwise, which is its kind: every Slack channel is ``"slack"``)."""

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def send(self, request: ApprovalRequest) -> str | None:
        raise NotImplementedError

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        return None

    async def progress(self, request: ApprovalRequest, ref: str | None) -> None:
        """A request that needs several approvals got a vote and still waits: show the count
        (``request.votes``) where it was delivered. Optional: the engine calls it on channels
        that have it."""

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        """The request still waits (``remind_every=``): remind its approvers where it was
        delivered. Optional, as ``progress``."""

    def routes(self) -> Sequence[BaseRoute]:
        return ()

    async def aclose(self) -> None:
        return None


def check_label(label: str | None, name: str) -> str:
    """A channel's ``label=``: a non-empty string, or (``None``) its ``name``."""
    if label is None:
        return name
    if not isinstance(label, str) or not label.strip():
        raise ConfigurationError(f"label must be a non-empty string, not {label!r}")
    return label


def channel_label(channel: Channel) -> str:
    """What a policy names ``channel`` by: its ``label``, or its ``name`` when it has none."""
    label = getattr(channel, "label", None)
    return label if isinstance(label, str) and label else channel.name
