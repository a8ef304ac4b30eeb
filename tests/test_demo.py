"""The demo, run as a user runs it, answered through its stdin."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import ByteReceiveStream, Process

pytestmark = pytest.mark.anyio

DEMO = [sys.executable, "-m", "humanlayer_async.cli", "demo"]
ROOT = Path(__file__).resolve().parent.parent


async def read_until(stream: ByteReceiveStream, buffer: list[str], pattern: str) -> re.Match[str]:
    with anyio.fail_after(30):
        while not (match := re.search(pattern, "".join(buffer))):
            buffer.append((await stream.receive()).decode())
    return match


async def read_to_the_end(process: Process, buffer: list[str]) -> int:
    """Everything the process still prints, until it exits; its exit status."""
    assert process.stdout is not None
    with anyio.fail_after(30):
        async for chunk in process.stdout:
            buffer.append(chunk.decode())
        return await process.wait()


async def test_demo_runs_reads_at_once_and_waits_for_the_terminal() -> None:
    command = [*DEMO, "--listen", "127.0.0.1:0", "--timeout", "60"]
    async with await anyio.open_process(command) as process:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        # Port 0: the sign-in link names the port the console really listens on.
        errors: list[str] = []
        link = (await read_until(process.stderr, errors, r"web console: (http://\S+)\n")).group(1)
        async with httpx.AsyncClient() as client:
            assert (await client.get(link)).status_code == 303  # signed in, sent to the console
        out: list[str] = []
        ids = {}
        for function in ("send_email", "transfer_money", "delete_database_records"):
            pattern = rf"{function}\([^\n]*\n(?:  [^\n]*\n)*?  answer: y (\w+)"
            ids[function] = (await read_until(process.stdout, out, pattern)).group(1)
        text = "".join(out)
        for line in ("fetch weather              ran", "transfer $100              ran"):
            assert line in text
        await process.stdin.send(f"y {ids['send_email']}\n".encode())
        await process.stdin.send(f"n {ids['transfer_money']} vendor not verified\n".encode())
        await process.stdin.send(f"y {ids['delete_database_records']}\n".encode())
        assert await read_to_the_end(process, out) == 0
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


async def test_demo_on_a_busy_port_says_how_to_pick_another() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await anyio.run_process([*DEMO, "--listen", f"127.0.0.1:{port}"], check=False)
    err = result.stderr.decode()
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err
    assert "--listen 127.0.0.1:0" in err and "make demo LISTEN=127.0.0.1:0" in err
    assert "listen=None" not in err  # the Python API's advice means nothing on the command line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
async def test_make_demo_passes_listen_on() -> None:
    async def planned(*variables: str) -> list[str]:
        """The commands ``make demo`` would run (also when the tests run under make)."""
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        command = ["make", "--no-print-directory", "--dry-run", "demo", *variables]
        return (await anyio.run_process(command, cwd=ROOT, env=env)).stdout.decode().splitlines()

    assert any(
        line.endswith("humanlayer-async demo --listen 127.0.0.1:0")
        for line in await planned("LISTEN=127.0.0.1:0")
    )
    assert any(line.endswith("humanlayer-async demo --listen 127.0.0.1:8787") for line in await planned())
