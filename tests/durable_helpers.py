"""Helpers of the durable-store tests: agent and CLI processes, waiting on a store."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import Process

T = TypeVar("T")

AGENT = Path(__file__).with_name("durable_agent.py")
ROOT = AGENT.parent.parent


def cli_command() -> list[str]:
    """``humanlayer-async`` as installed beside this interpreter (as a user runs it)."""
    script = Path(sys.executable).with_name("humanlayer-async")
    return [str(script)] if script.exists() else [sys.executable, "-m", "humanlayer_async.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("HUMANLAYER_STORE", None)
    return env


async def spawn_agent(url: str, run_id: str, log: Path, *flags: str) -> Process:
    return await anyio.open_process(
        [sys.executable, str(AGENT), url, run_id, str(log), *flags], env=_env(), cwd=ROOT
    )


async def finish(process: Process) -> tuple[int, dict[str, Any]]:
    """Wait (20 s at most) for an agent to exit; its exit status and the JSON line it printed."""
    assert process.stdout is not None
    chunks: list[bytes] = []
    with anyio.fail_after(20):
        async for chunk in process.stdout:
            chunks.append(chunk)
        code = await process.wait()
    lines = [line for line in b"".join(chunks).decode().splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else {}


async def kill(process: Process) -> None:
    process.kill()
    with anyio.fail_after(10):
        await process.wait()
    await process.aclose()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str = ""
) -> tuple[int, str, str]:
    """Run ``humanlayer-async ARGS`` to its end, ``stdin`` typed in; exit status, stdout, stderr."""
    merged = _env()
    merged.update(env or {})
    result = await anyio.run_process(
        [*cli_command(), *args], input=stdin.encode(), env=merged, cwd=cwd or ROOT, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def wait_until(probe: Callable[[], Awaitable[T | None]]) -> T:
    """``probe()``'s first truthy result, polling under a 15 s deadline (tests only)."""
    with anyio.fail_after(15):
        while not (value := await probe()):
            await anyio.sleep(0.02)
    return value


def starts(log: Path) -> list[float]:
    """When the tool started, once per run, from the agent's log."""
    if not log.exists():
        return []
    return [float(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")]


async def pg_schema_exists(dsn: str, schema: str) -> bool:
    """Whether the PostgreSQL server at ``dsn`` has a schema named ``schema``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema
        )
    finally:
        await conn.close()
    return bool(found)
