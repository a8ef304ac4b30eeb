"""An agent killed right after its own channel stores the decision, before the tool can start.

    python tests/crash_agent.py STORE_URL RUN_ID LOG

It makes the same gated call as ``tests/durable_agent.py`` (``transfer(amount=5, to="acme")``,
appending ``start <time>`` to LOG when the tool starts), in run ``RUN_ID``. Its only channel
approves the request and, as soon as the decision is stored, kills the process with SIGKILL:
the waiting call never wakes. A restart with ``durable_agent.py`` and the same run must then
run the tool exactly once.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.channels import BaseChannel, Decider
from humanlayer_async.stores import store_from_url


class ApproveThenDie(BaseChannel):
    name = "crash"

    def __init__(self) -> None:
        self._decider: Decider | None = None
        self._tasks: TaskGroup | None = None

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self._decider = decider
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            await anyio.sleep_forever()

    async def send(self, request: ApprovalRequest) -> str | None:
        assert self._tasks is not None
        self._tasks.start_soon(self._approve_and_die, request.id)
        return None

    async def _approve_and_die(self, request_id: str) -> None:
        assert self._decider is not None
        await self._decider.decide(request_id, True, by="cfo", via=self.name)
        os.kill(os.getpid(), signal.SIGKILL)  # stored; the waiting call has not woken yet


async def main() -> int:
    url, run_id, log = sys.argv[1:4]
    async with HumanLayer([ApproveThenDie()], store=store_from_url(url), listen=None, run_id=run_id) as hl:

        @hl.require_approval()
        async def transfer(amount: int, to: str) -> object:
            async with await anyio.open_file(log, "a") as file:
                await file.write(f"start {time.time()}\n")
            return {"sent": amount, "to": to}

        await transfer(5, "acme")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
