"""An agent step in a process of its own, for the cross-process tests of the durable stores.

    python tests/durable_agent.py STORE_URL RUN_ID LOG [--hang] [--timeout SECONDS] [--no-result]

It makes one gated call, ``transfer(amount=5, to="acme")``, in run ``RUN_ID`` and prints
one JSON line: ``{"result": ...}`` or ``{"error": "<exception type>", "message": ...}``.
The tool appends ``start <unix time>`` to LOG when it starts (so tests count runs and
measure how fast a decision made elsewhere wakes it), and ``--hang`` makes it wait
there forever, to be killed inside the tool.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import anyio

from humanlayer_async import HumanLayer, HumanLayerError
from humanlayer_async.stores import store_from_url


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("run_id")
    parser.add_argument("log")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-result", action="store_true")
    args = parser.parse_args()

    async with HumanLayer([], store=store_from_url(args.url), listen=None, run_id=args.run_id) as hl:

        @hl.require_approval(timeout=args.timeout)
        async def transfer(amount: int, to: str) -> object:
            async with await anyio.open_file(args.log, "a") as log:
                await log.write(f"start {time.time()}\n")
            if args.hang:
                await anyio.sleep_forever()
            return object() if args.no_result else {"sent": amount, "to": to}

        try:
            result = await transfer(5, "acme")
        except HumanLayerError as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
            return 3
        print(json.dumps({"result": None if args.no_result else result}), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
