"""What you need to test your own gated tools without a person at hand.

``AutoChannel`` decides every request it is sent by a rule of yours::

    hl = HumanLayer([AutoChannel(lambda request: request.kwargs["amount"] < 5000)])

It records what it was sent and how each request ended, for your assertions.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from ._exceptions import ChannelError
from ._models import ApprovalRequest
from .channels.base import BaseChannel, Decider

__all__ = ["AutoChannel", "Rule"]

Rule = Callable[[ApprovalRequest], bool | str | Awaitable[bool | str | None] | None]
"""``True`` approves, ``False`` denies, a string answers a question (or, for an
approval, denies with that string as the reason), ``None`` leaves it pending."""


class AutoChannel(BaseChannel):
    """A channel that decides each request by ``rule``, as ``by``, through the real decide path.

    Decisions go through ``HumanLayer.decide`` / ``respond`` (approvers, first-wins and the
    audit trail apply), after ``delay`` seconds, from the channel's own task.
    ``sent`` lists the requests it received; ``updated`` the same requests as they ended.
    """

    name = "auto"

    def __init__(self, rule: Rule = lambda request: True, *, by: str = "auto", delay: float = 0.0) -> None:
        self.rule = rule
        self.by = by
        self.delay = delay
        self.sent: list[ApprovalRequest] = []
        self.updated: list[ApprovalRequest] = []
        self._decider: Decider | None = None
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"AutoChannel(by={self.by!r})"

    async def send(self, request: ApprovalRequest) -> str | None:
        if self._task_group is None or self._decider is None:
            raise ChannelError("AutoChannel.send() before run(): start the HumanLayer first")
        self.sent.append(request)
        self._task_group.start_soon(self._decide, self._decider, request)
        return request.id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        self.updated.append(request)

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as task_group:
            self._task_group, self._decider = task_group, decider
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._task_group = None

    async def _decide(self, decider: Decider, request: ApprovalRequest) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        verdict = self.rule(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is None:
            return
        if isinstance(verdict, str) and request.kind == "question":
            await decider.respond(request.id, verdict, by=self.by, via=self.name)
        elif isinstance(verdict, str):
            await decider.decide(request.id, False, by=self.by, comment=verdict, via=self.name)
        else:
            await decider.decide(request.id, verdict, by=self.by, via=self.name)
