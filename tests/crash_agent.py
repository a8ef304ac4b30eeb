"""An agent killed the moment its decision is stored, before its waiting call can wake.

    python tests/crash_agent.py STORE_URL RUN_ID LOG

It makes the same gated call as ``tests/durable_agent.py`` (``transfer(amount=5, to="acme")``,
appending ``start <time>`` to LOG when the tool starts), in run ``RUN_ID``. Its channel
approves the request at once; its store kills the process with SIGKILL as soon as the
decision is written, so nothing of the process runs after that. A restart with
``durable_agent.py`` and the same run must then run the tool exactly once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import anyio

from humanlayer_async import Decision, HumanLayer
from humanlayer_async.stores import DurableStore, store_from_url
from humanlayer_async.testing import AutoChannel


class DiesAfterDeciding:
    """The real store, except that the process dies right after a decision is stored."""

    def __init__(self, store: DurableStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def decide(self, decision: Decision) -> Decision:
        standing = await self._store.decide(decision)
        os.kill(os.getpid(), signal.SIGKILL)
        return standing


async def main() -> int:
    url, run_id, log = sys.argv[1:4]
    store = DiesAfterDeciding(store_from_url(url))
    async with HumanLayer([AutoChannel(by="cfo")], store=store, listen=None, run_id=run_id) as hl:

        @hl.require_approval()
        async def transfer(amount: int, to: str) -> object:
            async with await anyio.open_file(log, "a") as file:
                await file.write(f"start {time.time()}\n")
            return {"sent": amount, "to": to}

        await transfer(5, "acme")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
