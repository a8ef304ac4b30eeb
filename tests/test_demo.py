"""The demo, run as a user runs it, answered through its stdin."""

from __future__ import annotations

import getpass
import re
import sys

import anyio
import pytest
from anyio.abc import Process

pytestmark = pytest.mark.anyio


async def read_until(process: Process, buffer: list[str], pattern: str) -> re.Match[str]:
    assert process.stdout is not None
    with anyio.fail_after(30):
        while not (match := re.search(pattern, "".join(buffer))):
            buffer.append((await process.stdout.receive()).decode())
    return match


async def test_demo_runs_reads_at_once_and_waits_for_the_terminal() -> None:
    command = [sys.executable, "-m", "humanlayer_async.cli", "demo", "--listen", "127.0.0.1:0"]
    command += ["--timeout", "60"]
    async with await anyio.open_process(command) as process:
        assert process.stdin is not None
        out: list[str] = []
        ids = {}
        for function in ("send_email", "transfer_money", "delete_database_records"):
            match = await read_until(process, out, rf"{function}\([^\n]*\n(?:  [^\n]*\n)*?  answer: y (\w+)")
            ids[function] = match.group(1)
        text = "".join(out)
        for line in ("fetch weather              ran", "transfer $100              ran"):
            assert line in text
        await process.stdin.send(f"y {ids['send_email']}\n".encode())
        await process.stdin.send(f"n {ids['transfer_money']} vendor not verified\n".encode())
        await process.stdin.send(f"y {ids['delete_database_records']}\n".encode())
        await read_until(process, out, r"summary(\n.*){7}")
        assert await process.wait() == 0
    text = "".join(out)
    summary = text[text.index("summary") :]
    user = getpass.getuser()
    assert re.search(rf"ran\s+send email\s+approved by {user} via console at .*, after \d", summary)
    assert re.search(
        rf"refused\s+transfer \$10,000\s+denied by {user} via console.*vendor not verified", summary
    )
    assert re.search(rf"ran\s+delete database records\s+approved by {user} via console", summary)
    assert re.search(r"ran\s+transfer \$100\s+no approval needed", summary)
    assert re.search(r"ran\s+fetch weather\s+no approval needed", summary)
