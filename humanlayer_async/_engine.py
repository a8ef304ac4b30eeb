"""The engine: one request from creation to its final state.

``Decisions`` is what decides a request that exists (approver lists, the first decision
wins, waking the calls waiting here): the channels' ``Decider`` and what the operator CLI
uses with a store alone. ``Engine`` adds the asking side, the gate's ``Asker``: create
(or re-attach within a run), deliver, wait, settle a timeout or a cancellation, tell the
channels how it ended, and the execution ledger around the approved call. The store
writes the audit entries of requests and decisions with them; the engine records the
other steps (delivered, re-attached, executing, executed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Unpack

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._audit import AuditEntry, AuditEvent, logger, make_entry
from ._codec import digest, dumps
from ._edits import check_edits
from ._exceptions import (
    AlreadyExecuted,
    ArgumentsEdited,
    ChannelError,
    HumanLayerError,
    InvalidEdit,
    NotAnApprover,
    OutcomeUnknown,
    StoreError,
    TooManyPending,
    UnknownGrant,
    UnknownRequest,
)
from ._gate import ToolSpec
from ._models import (
    ApprovalRequest,
    Decision,
    Execution,
    Grant,
    Principal,
    Status,
    Vote,
    current_requester,
)
from ._observe import Observer
from ._pages import Filters
from ._registry import CLOSED, EXPIRED, Outcome, Registry
from ._render import masked
from ._retry import Backoff
from ._runtime import Runtime
from ._schedule import LEASE, REMIND, escalation_step, next_reminder, planned, ready_at
from .channels.base import Answered, Channel
from .stores.base import Step, Store

__all__ = ["Decisions", "Engine", "Run", "current_run"]


@dataclass(slots=True)
class Run:
    """One agent run: its id, and how often each call was made in it (for re-attach keys)."""

    run_id: str
    calls: Counter[str] = field(default_factory=Counter)

    def key(self, qualname: str, arguments_digest: str) -> str:
        """The next re-attach key for this call: the n-th identical call gets occurrence n."""
        call = f"{qualname}\0{arguments_digest}"
        occurrence = self.calls[call]
        self.calls[call] += 1
        return hashlib.sha256(f"{self.run_id}\0{call}\0{occurrence}".encode()).hexdigest()


current_run: ContextVar[Run | None] = ContextVar("humanlayer_run", default=None)

_UNDELIVERED: dict[int, str | None] = {}
"""The (never written) delivery record of a call with no channel: saves each one a dict."""


@dataclass
class _Delivered:
    """Where a request that needs several approvals was delivered, and what is shown there."""

    channels: Sequence[Channel]
    refs: dict[int, str | None]
    shown: tuple[int, str] = (0, "")
    """The count of votes and the call's fingerprint shown there last."""


class _Unread(StoreError):
    """The store failed to read these requests: ``ids``."""

    def __init__(self, ids: list[str], error: str) -> None:
        super().__init__(f"{len(ids)} requests not read: {error}")
        self.ids = ids


class Decisions:
    """Decides requests that exist: through a store, waking the calls waiting in ``registry``."""

    def __init__(self, store: Store, registry: Registry | None = None) -> None:
        self.store = store
        self.registry = Registry() if registry is None else registry
        self.observer: Observer | None = None
        """Told of each step (traces, metrics); ``None``: nothing to tell, nothing spent."""
        self._change_events: list[anyio.Event] = []
        # The tools that may have a live grant (loaded when following the store, kept up to
        # date by its "granted" events): only their calls look for one in the store.
        self._granted: set[str] = set()

    def next_change(self) -> anyio.Event:
        """An event set at the next request stored or decision recorded (here, or seen from
        another process): what ``testing.wait_for_pending`` waits on instead of polling."""
        event = anyio.Event()
        self._change_events.append(event)
        return event

    def _changed(self) -> None:
        if self._change_events:
            events, self._change_events = self._change_events, []
            for event in events:
                event.set()

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
        """Approve or deny as ``by``: the decision that stands, and whether it is this one.

        On a request that needs several approvals this is a vote: it decides once enough
        distinct approvers approved, or at the first denial. ``edits`` change editable
        arguments with the approval (``InvalidEdit`` when they may not: nothing decided).
        ``grant`` (seconds) also allows the same call for that long once this approval
        decides (with several approvals: once every counted approval asked for one).
        ``seen`` is the ``fingerprint`` of the call the approver saw: an answer to another
        version of it (edited meanwhile) raises ``ArgumentsEdited``, nothing decided.
        """
        request, who = await self._check_approver(request_id, by, via)
        if seen is not None and request.decision is None and seen != request.fingerprint:
            raise ArgumentsEdited(request_id, request.function)
        if grant is not None and request.decision is None:
            if not approved:
                raise HumanLayerError(f"a grant goes with an approval, not a denial (request {request_id!r})")
            if request.tool is None or request.kind != "approval":
                raise HumanLayerError(
                    f"request {request_id!r} names no tool to grant: approve it without a grant"
                )
        if edits is not None and request.decision is None:
            if not approved:
                raise InvalidEdit(request_id, "", "edits go with an approval, not a denial")
            check_edits(request_id, edits, request.editable or {}, request.kwargs)
            edits = dict(edits)
        now = datetime.now(UTC)
        if request.approvals > 1:
            answered = await self._vote(
                request, Vote(who.id, approved, via, comment, now, who.user, edits, grant, seen)
            )
        else:
            status = Status.APPROVED if approved else Status.DENIED
            decision = Decision(
                request_id, approved, status, who.id, via, comment, now, None, who.user, (), edits
            )
            answered = await self._record(decision, request.function)
        if grant is not None and answered.stands and answered.decision is not None:
            granters = (who,) if request.approvals == 1 else None
            return replace(
                answered, grant=await self._grant_from(request, answered.decision, granters, grant)
            )
        return answered

    async def _grant_from(
        self,
        request: ApprovalRequest,
        decision: Decision,
        granters: tuple[Principal, ...] | None,
        seconds: float,
    ) -> Grant | None:
        """Allow the same call as the approved ``request`` for ``seconds``: every argument
        approvers saw unmasked must be equal; the grant, or ``None`` when none is given. With
        several approvals (``granters`` ``None``), only when every vote that made the
        decision asked for a grant, for the shortest."""
        if not decision.approved or request.tool is None:
            return None
        if granters is None:
            asked = [vote.grant for vote in decision.votes]
            if not all(asked):
                logger.info(
                    "grant.not_given", request_id=request.id, reason="not every approver asked for it"
                )
                return None
            seconds = min(a for a in asked if a is not None)
            granters = tuple(Principal(vote.by, vote.user) for vote in decision.votes)
        kwargs = {**request.kwargs, **(decision.edits or {})}
        now = datetime.now(UTC)
        return await self.give_grant(
            Grant(
                id=secrets.token_hex(16),
                function=request.tool,
                where={name: value for name, value in kwargs.items() if not masked(value)},
                by=tuple(p.id for p in granters),
                created_at=now,
                expires_at=now + timedelta(seconds=seconds),
                approvals=request.approvals,
                approvers=request.approvers,
                users=tuple(p.user for p in granters),
            )
        )

    async def respond(self, request_id: str, text: str, *, by: str | Principal, via: str) -> Answered:
        """Answer a question as ``by``: the decision that stands, and whether it is this answer."""
        request, who = await self._check_approver(request_id, by, via, question=True)
        return await self._record(
            Decision(request_id, True, Status.APPROVED, who.id, via, None, datetime.now(UTC), text, who.user),
            request.function,
        )

    async def cancel(self, request_id: str, *, by: str | Principal, reason: str | None, via: str) -> Answered:
        """Withdraw a pending request as ``by`` (an approver, as for any decision)."""
        request, who = await self._check_approver(request_id, by, via)
        return await self._record(
            Decision(
                request_id, False, Status.CANCELLED, who.id, via, reason, datetime.now(UTC), None, who.user
            ),
            request.function,
        )

    async def settle(
        self, request: ApprovalRequest, status: Status, *, via: str, comment: str | None = None
    ) -> Decision:
        """Store a closing decision nobody made (timeout, the caller's cancellation, failure)."""
        decision = Decision(request.id, False, status, None, via, comment, datetime.now(UTC))
        standing = (await self._record(decision, request.function)).decision
        assert standing is not None  # a decision, not a vote: something stands
        return standing

    async def get(self, request_id: str) -> ApprovalRequest:
        return await self.store.get(request_id)

    async def pending(
        self, *, after: str | None = None, limit: int | None = None, **filters: Unpack[Filters]
    ) -> list[ApprovalRequest]:
        """The pending requests, oldest first, as ``Store.list_pending`` filters and pages them
        (the next page: ``after=page[-1].id``)."""
        return await self.store.list_pending(after=after, limit=limit, **filters)

    async def count_pending(self, **filters: Unpack[Filters]) -> int:
        """How many requests ``pending`` with these filters lists, all pages."""
        return await self.store.count_pending(**filters)

    async def claim(self, key: str, expires_at: datetime) -> bool:
        return await self.store.claim(key, expires_at)

    # -- grants ---------------------------------------------------------------------------

    async def give_grant(self, grant: Grant) -> Grant:
        """Store ``grant`` (its granters checked by the caller); calls of its tool look for it."""
        await self.store.add_grant(grant)
        self._granted.add(grant.function)
        self._changed()
        return grant

    async def confirm_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Give a grant that needs several approvers as one more of them."""
        grant, who = await self._check_granter(grant_id, by)
        if not grant.live(datetime.now(UTC)):
            raise HumanLayerError(
                f"grant {grant_id!r} is expired, used up or revoked: it cannot be confirmed"
            )
        confirmed = await self.store.confirm_grant(grant_id, who)
        self._granted.add(confirmed.function)
        return confirmed

    async def revoke_grant(self, grant_id: str, *, by: str | Principal) -> Grant:
        """Revoke a grant as ``by`` (one who may give it): calls ask again from now on."""
        _, who = await self._check_granter(grant_id, by)
        return await self.store.revoke_grant(grant_id, who.id)

    async def grants(self, *, active: bool = True) -> list[Grant]:
        return await self.store.grants(active=active)

    async def history(
        self, *, since: datetime | None = None, request_id: str | None = None
    ) -> list[AuditEntry]:
        """The audit trail from ``since`` on (of one request), oldest first."""
        return await self.store.history(since=since, request_id=request_id)

    async def _check_granter(self, grant_id: str, by: str | Principal) -> tuple[Grant, Principal]:
        who = by if isinstance(by, Principal) else Principal(by)
        grant = next((g for g in await self.store.grants(active=False) if g.id == grant_id), None)
        if grant is None:
            raise UnknownGrant(grant_id)
        if grant.approvers and not who.matches(grant.approvers):
            logger.warning("grant.not_an_approver", grant_id=grant_id, by=who.id)
            raise NotAnApprover(grant_id, who.id, subject="grant")
        return grant, who

    async def _load_grants(self) -> None:
        self._granted = {grant.function for grant in await self.store.grants()}

    async def _record(self, decision: Decision, function: str) -> Answered:
        """Store ``decision`` (of a request of ``function``) unless one stands; wake its waiters."""
        standing = await self.store.decide(decision)
        self.registry.resolve(standing)
        self._changed()
        if standing is decision and self.observer is not None:  # stored here: counted once, here
            self.observer.decided(function, decision)
        return Answered(standing, standing is decision or standing == decision)

    async def _vote(self, request: ApprovalRequest, vote: Vote) -> Answered:
        tally = await self.store.vote(request.id, vote, request.approvals)
        if tally.decision is not None:
            self.registry.resolve(tally.decision)
            if tally.decided_now and self.observer is not None:
                self.observer.decided(request.function, tally.decision)
        else:
            await self._voted(request.id)
        self._changed()
        stands = tally.decision is None or tally.decided_now
        return Answered(tally.decision, stands, tally.votes, request.approvals)

    async def _voted(self, request_id: str) -> None:
        """A vote counted and the request still waits: the engine shows the count where it sent it."""

    async def _check_approver(
        self, request_id: str, by: str | Principal, via: str, *, question: bool = False
    ) -> tuple[ApprovalRequest, Principal]:
        """The request and who decides it, once they may (a question, with ``question``)."""
        who = by if isinstance(by, Principal) else Principal(by)
        request = await self.store.get(request_id)
        if question and request.kind != "question":
            raise HumanLayerError(f"request {request_id!r} is an approval, not a question: use decide()")
        if not request.may_decide(who):
            requester = request.is_requester(who)
            logger.warning(
                "approval.not_an_approver", request_id=request_id, by=who.id, via=via, requester=requester
            )
            raise NotAnApprover(request_id, who.id, requester=requester)
        return request, who


class Engine(Decisions):
    """Asks: a request from creation to its final state, then the approved call's one run.

    ``prepare(channels)`` makes sure the runtime runs and those channels are started
    before a request goes out to them.
    """

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        *,
        prepare: Callable[[Sequence[Channel]], Awaitable[None]],
        channels: Sequence[Channel],
        timeout: float,
        max_pending: int | None,
        default_run: Run | None,
    ) -> None:
        super().__init__(store)
        self.runtime = runtime
        self._prepare = prepare
        self.channels = channels
        self.timeout = timeout
        self.max_pending = max_pending
        self.default_run = default_run
        self._asking = 0  # calls between ask() and their decision: what max_pending bounds
        # Requests waited for here that need several approvals: where they were delivered,
        # so that each vote's count is shown there (kept for these only: it costs memory).
        self._counted: dict[str, _Delivered] = {}

    def run(self) -> Run | None:
        """The run the current task's calls belong to."""
        return current_run.get() or self.default_run

    async def _audit(self, event: AuditEvent, request_id: str, **fields: Any) -> None:
        await self.store.record(make_entry(event, request_id, **fields))

    # -- the gate's Asker ---------------------------------------------------------------

    async def ask(
        self,
        tool: ToolSpec,
        kwargs: Mapping[str, Any],
        context: Mapping[str, Any],
        message: str | None = None,
    ) -> Decision:
        """Store a request, deliver it, and wait for the decision that stands.

        Within a run, a call whose request an earlier process (or another caller here)
        left behind re-attaches to it instead: it waits for that request (no second
        message) or gets its decision at once.

        One frame from here to the decision: each coroutine still on the stack while a
        call waits would cost every pending call a few hundred bytes.
        """
        channels = self.channels if tool.channels is None else tool.channels
        runtime = self.runtime
        if not (runtime.running and runtime.loop is asyncio.get_running_loop()) or tool.channels is not None:
            await self._prepare(channels)  # start what is not started yet (and check the loop)
        if self.max_pending is not None and self._asking >= self.max_pending:
            logger.warning("approval.too_many_pending", function=tool.function, max_pending=self.max_pending)
            raise TooManyPending(tool.function, self.max_pending)
        self._asking += 1
        try:
            timeout = self.timeout if tool.timeout is None else tool.timeout
            now = datetime.now(UTC)
            run = current_run.get() or self.default_run
            # In a run, the request is bound to the arguments' digest: a replay in another
            # process re-attaches by it and may run only these arguments. (An argument
            # without a JSON form is then an error naming it.) Durable stores digest the
            # arguments of every request from the JSON they store.
            arguments = key = None
            if run is not None:
                arguments = digest(kwargs)
                key = run.key(tool.qualname or tool.function, arguments)
            request = ApprovalRequest(
                id=secrets.token_hex(16),
                kind=tool.kind,
                function=tool.function,
                kwargs=kwargs,
                context=context,
                approvers=tool.approvers,
                created_at=now,
                expires_at=now + timedelta(seconds=timeout),
                run_id=None if run is None else run.run_id,
                message=message,
                doc=tool.doc,
                key=key,
                digest=arguments,
                requested_by=current_requester.get(),
                approvals=tool.approvals,
                editable=tool.editable,
                tool=tool.qualname if tool.kind == "approval" else None,
            )
            registry = self.registry
            # Wait before storing: another process may decide as soon as the request is stored.
            future = registry.wait(request.id, asyncio.get_running_loop().time() + timeout)
            try:
                stored = await self.store.create_or_attach(request)
            except BaseException:
                registry.discard(request.id)
                raise
            self._changed()
            if self.observer is not None:
                self.observer.requested(stored, channels, attached=stored.id != request.id)
            # The tool's own channels, then its escalations' (refs index into this list).
            targets = (
                [*channels, *(c for e in tool.escalations for c in e.channels)]
                if tool.escalations
                else channels
            )
            refs = {} if channels else _UNDELIVERED  # where it was delivered: target index → ref
            deliver = stored.id == request.id
            if not deliver:  # re-attached: wait for the stored request instead
                registry.discard(request.id)
                attached = await self._attach(stored, targets)
                if isinstance(attached, Decision):
                    return attached
                request, future, refs = stored, *attached
            elif request.tool in self._granted and await self._use_grant(request):
                deliver = False  # a grant decided it: nobody is asked
            steps = None
            try:
                if deliver and channels:
                    await self._deliver(request, channels, refs)
                if request.approvals > 1 and refs:
                    self._counted[request.id] = _Delivered(targets, refs)
                if (tool.remind_every is not None or tool.escalations) and refs:
                    steps = anyio.CancelScope()
                    self.runtime.spawn(self._carry_out, steps, request, tool, targets, refs)
                outcome = await future
                if outcome is CLOSED:
                    raise self._stopped()
                if outcome is EXPIRED:
                    outcome = await self.settle(request, Status.TIMED_OUT, via="timeout")
                decision = outcome
            except ChannelError:
                raise
            except (anyio.get_cancelled_exc_class(), HumanLayerError) as exc:
                if request.key is not None:
                    # A run's request outlives its caller: a restarted process re-attaches to it.
                    logger.info("approval.left_pending", request_id=request.id, run_id=request.run_id)
                    raise
                cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                with self.runtime.working(), anyio.CancelScope(shield=True):
                    decision = await self.settle(
                        request,
                        Status.CANCELLED,
                        via="caller" if cancelled else "shutdown",
                        comment="the waiting call was cancelled" if cancelled else str(exc),
                    )
                    if refs:
                        self.runtime.spawn(self._update, replace(request, decision=decision), targets, refs)
                raise
            finally:
                registry.discard(request.id, future)
                self._counted.pop(request.id, None)
                if steps is not None:
                    steps.cancel()
            if refs:  # tell the channels that delivered it; none did: nothing to update
                self.runtime.spawn(self._update, replace(request, decision=decision), targets, refs)
            return decision
        finally:
            self._asking -= 1

    async def observed_ask(
        self,
        tool: ToolSpec,
        kwargs: Mapping[str, Any],
        context: Mapping[str, Any],
        message: str | None = None,
    ) -> Decision:
        """``ask``, inside the observer's ``asking`` (the gate's asker when there is an observer)."""
        assert self.observer is not None
        return await self.observer.asking(tool, functools.partial(self.ask, tool, kwargs, context, message))

    async def _attach(
        self, stored: ApprovalRequest, channels: Sequence[Channel]
    ) -> Decision | tuple[asyncio.Future[Outcome], dict[int, str | None]]:
        """A request of this run stored earlier: its decision, or a future and where it was delivered."""
        await self._audit(
            "approval.reattached",
            stored.id,
            function=stored.function,
            run_id=stored.run_id,
            status=stored.status,
        )
        if stored.decision is not None:
            return stored.decision
        remaining = max(0.0, (stored.expires_at - datetime.now(UTC)).total_seconds())
        future = self.registry.wait(stored.id, asyncio.get_running_loop().time() + remaining)
        try:
            refs = await self._delivered(stored, channels)
            latest = await self.store.get(stored.id)  # decided between attaching and waiting?
        except BaseException:
            self.registry.discard(stored.id, future)
            raise
        if latest.decision is not None:
            self.registry.resolve(latest.decision)
        return future, refs

    async def _delivered(
        self, request: ApprovalRequest, channels: Sequence[Channel]
    ) -> dict[int, str | None]:
        """Where ``request`` was delivered before, from the audit trail, for updates."""
        index = {channel.name: position for position, channel in enumerate(channels)}
        return {
            index[entry.fields["channel"]]: entry.fields.get("ref")
            for entry in await self.store.history(request_id=request.id)
            if entry.event == "approval.delivered" and entry.fields.get("channel") in index
        }

    def _stopped(self) -> HumanLayerError:
        """Why a waiter was woken without a decision: the runtime failed or closed."""
        error = self.runtime.error
        if isinstance(error, HumanLayerError):
            return HumanLayerError(f"this call waited for a human when {error}")
        return HumanLayerError("the HumanLayer closed while this call waited for a human")

    async def _use_grant(self, request: ApprovalRequest) -> bool:
        """Decide a new request by a grant that covers it, if one does (counting its use)."""
        assert request.tool is not None
        grant = await self.store.use_grant(request.tool, request.kwargs, request.requested_by)
        if grant is None:
            return False
        given = ", ".join(grant.by)
        decision = Decision(
            request.id,
            True,
            Status.APPROVED,
            grant.by[0],
            "grant",
            f"allowed by grant {grant.id} given by {given}",
            datetime.now(UTC),
            user=grant.users[0] if grant.users else None,
            grant=grant.id,
        )
        await self._record(decision, request.function)
        if self.observer is not None:
            self.observer.granted(request.function)
        return True

    async def _deliver(
        self, request: ApprovalRequest, channels: Sequence[Channel], refs: dict[int, str | None]
    ) -> None:
        """Send to every channel (at least one) at once; fail closed when none delivered."""
        errors = await self._send(request, channels, refs)
        if refs:
            return
        reason = "; ".join(errors)
        decision = await self.settle(request, Status.FAILED, via="delivery", comment=reason)
        if decision.status is Status.FAILED:
            raise ChannelError(f"no channel could deliver the request for {request.function}: {reason}")

    async def _send(
        self,
        request: ApprovalRequest,
        channels: Sequence[Channel],
        refs: dict[int, str | None],
        first: int = 0,
    ) -> list[str]:
        """Send to ``channels`` at once, recording each delivery in ``refs`` under its index
        from ``first``; the errors of those that failed."""
        errors: list[str] = []

        async def send(index: int, channel: Channel) -> None:
            try:
                if self.observer is None:
                    ref = await channel.send(request)
                else:
                    with self.observer.delivering(request, channel):
                        ref = await channel.send(request)
            except Exception as exc:
                errors.append(f"{channel.name}: {exc}")
                logger.warning(
                    "approval.delivery_failed", request_id=request.id, channel=channel.name, error=str(exc)
                )
                return
            refs[index] = ref
            await self._audit("approval.delivered", request.id, channel=channel.name, ref=ref)

        if len(channels) == 1:
            await send(first, channels[0])
        else:
            async with anyio.create_task_group() as task_group:
                for index, channel in enumerate(channels, first):
                    task_group.start_soon(send, index, channel)
        return errors

    async def _carry_out(
        self,
        scope: anyio.CancelScope,
        request: ApprovalRequest,
        tool: ToolSpec,
        targets: Sequence[Channel],
        refs: dict[int, str | None],
    ) -> None:
        """Carry out ``request``'s reminders and escalations as they fall due, until the
        waiting call ends (``scope`` is cancelled then). See ``_schedule``. A store that
        fails meanwhile is tried again after a ``Backoff`` pause."""
        backoff = Backoff(first=0.5, cap=30.0)
        with scope:
            scheduled = False
            while True:
                try:
                    if not scheduled:
                        steps = planned(request.created_at, tool.remind_every, tool.escalations)
                        await self.store.schedule(request.id, steps)
                        scheduled = True
                    if not await self._due_steps(request.id, tool, targets, refs):
                        return
                    backoff.reset()
                except StoreError as exc:
                    pause = backoff.next() or 30.0
                    logger.warning(
                        "approval.schedule_failed", request_id=request.id, error=str(exc), retry_in=pause
                    )
                    await anyio.sleep(pause)

    async def _due_steps(
        self, request_id: str, tool: ToolSpec, targets: Sequence[Channel], refs: dict[int, str | None]
    ) -> bool:
        """Wait for the next step to fall due, or carry out those due; ``False`` when none is
        left or a decision stands."""
        steps = [step for step in await self.store.steps(request_id) if step.due_at is not None]
        if not steps:
            return False
        now = datetime.now(UTC)
        ready = [step for step in steps if ready_at(step) <= now]
        if not ready:
            await anyio.sleep((min(map(ready_at, steps)) - now).total_seconds())
            return True
        taken = False
        for step in ready:
            # Once taken, a step is carried out and marked done even if the call stops
            # waiting meanwhile: left half done, its lease would hold the others back.
            with anyio.CancelScope(shield=True):
                number = await self.store.take(request_id, step.name, LEASE)
                if number is None:
                    continue
                taken = True
                if not await self._step(request_id, step, number, tool, targets, refs):
                    return False
        if not taken:  # another process holds them, or the store's clock is behind ours
            await anyio.sleep(0.05)
        return True

    async def _step(
        self,
        request_id: str,
        step: Step,
        number: int,
        tool: ToolSpec,
        targets: Sequence[Channel],
        refs: dict[int, str | None],
    ) -> bool:
        """Carry out taken ``step`` and mark it done; ``False`` once a decision stands."""
        current = await self.store.get(request_id)
        if current.decision is not None:
            return False
        assert step.due_at is not None
        next_due = None
        if step.name == REMIND:
            if tool.remind_every is not None:  # else scheduled by another version of the tool: ends
                await self._remind(current, targets, refs, number)
                next_due = next_reminder(step.due_at, tool.remind_every, datetime.now(UTC))
        else:
            await self._escalate(current, tool, targets, refs, escalation_step(step.name))
        await self.store.done(request_id, step.name, number, next_due)
        return True

    async def _remind(
        self,
        request: ApprovalRequest,
        targets: Sequence[Channel],
        refs: Mapping[int, str | None],
        number: int,
    ) -> None:
        await self._audit("approval.reminded", request.id, reminder=number + 1)
        await self._each(request, targets, refs, "remind")

    async def _escalate(
        self,
        request: ApprovalRequest,
        tool: ToolSpec,
        targets: Sequence[Channel],
        refs: dict[int, str | None],
        number: int | None,
    ) -> None:
        """Widen who may decide ``request`` (stored first), then deliver it to more channels."""
        if number is None or number >= len(tool.escalations):
            return  # a step this process's tool does not have (another version of it scheduled it)
        escalation = tool.escalations[number]
        entry = make_entry(
            "approval.escalated",
            request.id,
            escalation=number,
            approvers=list(escalation.approvers),
            channels=[channel.name for channel in escalation.channels],
        )
        widened = await self.store.escalate(request.id, escalation.approvers, entry)
        if widened.decision is not None or not escalation.channels:
            return
        await self._prepare(escalation.channels)
        first = len(targets) - sum(len(e.channels) for e in tool.escalations[number:])
        errors = await self._send(widened, escalation.channels, refs, first)
        if len(errors) == len(escalation.channels):
            logger.warning("approval.escalation_undelivered", request_id=request.id, errors=errors)

    async def _voted(self, request_id: str) -> None:
        if request_id in self._counted:
            self.runtime.spawn(self._show_count, request_id)

    async def _show_count(self, request_id: str) -> None:
        """Show a waiting request's votes so far where it was delivered (``Channel.progress``)."""
        found = self._counted.get(request_id)
        if found is None:
            return
        request = await self.store.get(request_id)
        now = (len(request.votes), request.fingerprint)  # an edit restarts the count: 1 vote again
        if request.decision is None and now != found.shown:  # a store also tells its own votes
            found.shown = now
            await self._update(request, found.channels, found.refs)

    async def _update(
        self, request: ApprovalRequest, channels: Sequence[Channel], refs: Mapping[int, str | None]
    ) -> None:
        """Tell every channel that delivered the request how it ended (or, pending, its count)."""

        await self._each(request, channels, refs, "update" if request.decision is not None else "progress")

    async def _each(
        self,
        request: ApprovalRequest,
        channels: Sequence[Channel],
        refs: Mapping[int, str | None],
        method: Literal["update", "progress", "remind"],
    ) -> None:
        """Call ``method`` on every channel that delivered ``request`` and has it, at once."""

        async def call(channel: Channel, ref: str | None) -> None:
            act = getattr(channel, method, None)
            if act is None:  # progress and remind are optional
                return
            try:
                await act(request, ref)
            except Exception as exc:
                logger.warning(
                    f"approval.{method}_failed", request_id=request.id, channel=channel.name, error=str(exc)
                )

        async with anyio.create_task_group() as task_group:
            for index, ref in refs.items():
                task_group.start_soon(call, channels[index], ref)

    async def shadow(self, tool: ToolSpec, kwargs: Mapping[str, Any], context: Mapping[str, Any]) -> None:
        """A call of a tool in shadow mode would have asked: recorded as ``approval.shadowed``
        (with the arguments as approvers would have seen them) under an id of its own. The call
        runs whatever happens here: a store that fails is logged, never raised."""
        entry = make_entry(
            "approval.shadowed", secrets.token_hex(16), function=tool.function, kwargs=dict(kwargs)
        )
        try:
            await self.store.record(entry)
        except Exception as exc:
            logger.warning("approval.shadow_not_recorded", function=tool.function, error=str(exc))

    async def begin_execution(
        self, decision: Decision, tool: ToolSpec, kwargs: Mapping[str, Any]
    ) -> Execution | None:
        """Before an approved call runs: claim its one run in the store.

        Returns an earlier run's recorded result for a replayed call; raises
        ``OutcomeUnknown`` when an earlier run started and never finished, and
        ``AlreadyExecuted`` when it finished without a JSON result.
        """
        arguments = None if self.run() is None else digest(kwargs)  # checked after a re-attach
        earlier = await self.store.begin_execution(decision.request_id, arguments)
        if earlier is not None and earlier.state == "executing":
            await self._audit("approval.outcome_unknown", decision.request_id, function=tool.function)
            raise OutcomeUnknown(decision.request_id, tool.function)
        if earlier is not None:
            if earlier.result is None:
                raise AlreadyExecuted(decision.request_id, tool.function, earlier.outcome)
            return earlier
        await self._audit("approval.executing", decision.request_id, function=tool.function)
        if self.observer is not None:
            self.observer.executing(tool.function, decision)
        return None

    async def finish_execution(
        self, decision: Decision, tool: ToolSpec, error: BaseException | None, result: Any
    ) -> None:
        """After an approved call: record how it ended (and, in a run, its JSON result)."""
        outcome = "ok" if error is None else type(error).__name__
        if error is None or not isinstance(error, anyio.get_cancelled_exc_class()):
            # A cancelled tool stays "executing": whether its effect happened is unknown.
            recorded = None
            if error is None and self.run() is not None:
                with contextlib.suppress(StoreError):  # no JSON form: a replay gets AlreadyExecuted
                    recorded = dumps(result, "result")
            await self.store.finish_execution(decision.request_id, outcome, recorded)
        await self._audit("approval.executed", decision.request_id, function=tool.function, outcome=outcome)
        if self.observer is not None:
            self.observer.executed(tool.function, decision, error)

    # -- the store follower ---------------------------------------------------------------

    async def follow(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Wake local waiters when another process decides one of their requests.

        Each ``"decided"`` event of a request waited for here is read (the decision) and
        wakes its waiters; the events that arrive while reads are under way are read
        together, so a store reads them in a few transactions however many arrive at once.
        A ``"resync"`` event (the store reconnected and may have missed notifications)
        re-reads every request waited for here, so a lost notification delays a wake-up
        and never loses it. A store that fails (an outage outlasting its own reconnects)
        is followed again after a ``Backoff`` pause, and re-read then too; the calls
        waiting here carry on meanwhile. ``"granted"`` events (and resyncs) reload which
        tools may have a live grant.
        """
        await self._load_grants()
        task_status.started()
        decided, to_read = anyio.create_memory_object_stream[str](math.inf)
        with decided, to_read:
            async with anyio.create_task_group() as readers:
                readers.start_soon(self._read_decided, to_read)
                await self._watch(decided)
                readers.cancel_scope.cancel()  # the store was closed

    async def _watch(self, decided: MemoryObjectSendStream[str]) -> None:
        """Act on the store's events until it is closed; ``decided`` gets the ids of requests
        waited for here that another process decided."""
        backoff = Backoff(first=0.5, cap=30.0)
        while True:
            try:
                async for event in self.store.watch():
                    backoff.reset()
                    self._changed()
                    if event.kind == "resync":
                        await self._resync()
                    elif event.kind == "voted":
                        await self._voted(event.request_id)
                    elif event.kind == "granted":
                        await self._load_grants()
                    elif event.kind == "decided" and event.request_id in self.registry:
                        decided.send_nowait(event.request_id)
                return  # the store was closed
            except StoreError as exc:
                pause = backoff.next() or 30.0
                logger.error("humanlayer.store_follow_failed", error=str(exc), retry_in=pause)
                await anyio.sleep(pause)
            try:
                await self._resync()
            except StoreError as exc:
                logger.warning("humanlayer.resync_failed", error=str(exc))

    async def _read_decided(self, to_read: MemoryObjectReceiveStream[str]) -> None:
        """Wake the waiters of the requests announced decided: all those announced so far at
        once, again after a ``Backoff`` pause for those whose read failed."""
        backoff = Backoff(first=0.5, cap=30.0)
        async for request_id in to_read:
            ids = {request_id}
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    ids.add(to_read.receive_nowait())
            while ids:
                try:
                    await self._wake(ids)
                except _Unread as exc:
                    ids = {request_id for request_id in exc.ids if request_id in self.registry}
                    pause = backoff.next() or 30.0
                    logger.warning("humanlayer.read_failed", error=str(exc), retry_in=pause)
                    await anyio.sleep(pause)
                else:
                    ids = set()
                    backoff.reset()

    async def _wake(self, ids: Collection[str]) -> None:
        """Read the requests of ``ids`` (concurrently: a store reads them together) and wake the
        waiters of those decided; ``_Unread`` names those the store failed to read."""
        ids = list(ids)
        read = await asyncio.gather(*map(self.store.get, ids), return_exceptions=True)
        failed: list[str] = []
        for request_id, request in zip(ids, read, strict=True):
            if isinstance(request, ApprovalRequest):
                if request.decision is not None:
                    self.registry.resolve(request.decision)
            elif isinstance(request, StoreError):
                failed.append(request_id)
            elif not isinstance(request, UnknownRequest):  # (pruned meanwhile: nothing to wake)
                raise request
        if failed:
            raise _Unread(failed, str(next(r for r in read if isinstance(r, StoreError))))

    async def _resync(self) -> None:
        """Re-read every request waited for here; wake those decided meanwhile."""
        await self._load_grants()
        await self._wake(self.registry.waiting())
