"""A real PostgreSQL restart while calls wait and decisions arrive: nothing is lost, nothing twice.

The server is a throwaway one this test starts itself (``initdb`` and ``pg_ctl`` on a free
port, in a temporary directory, as the ``postgres`` user when the tests run as root), never
the shared one. Without those programs the test is skipped, except under ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from humanlayer_async import HumanLayer, StoreError
from humanlayer_async.stores import PostgresStore
from humanlayer_async.testing import wait_for_pending

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def _program(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A PostgreSQL server of the test's own, in a directory of its own."""

    def __init__(self, pg_ctl: str, directory: Path, port: int, user: str | None) -> None:
        self.pg_ctl, self.directory, self.port, self.user = pg_ctl, directory, port, user
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def control(self, *args: str) -> None:
        command = [self.pg_ctl, "-D", str(self.directory / "data"), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.control("-o", options, "-l", str(self.directory / "log"), "-w", "start")

    def stop(self) -> None:
        self.control("-m", "fast", "-w", "stop")


@pytest.fixture
def server() -> Iterator[Server]:
    initdb, pg_ctl = _program("initdb"), _program("pg_ctl")
    user = "postgres" if os.geteuid() == 0 else None
    missing = initdb is None or pg_ctl is None
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing = True
    if missing or initdb is None or pg_ctl is None:
        reason = "initdb and pg_ctl (and, as root, a postgres user) are needed for a throwaway server"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="hl-pg-"))
    try:
        if user is not None:
            shutil.chown(directory, user)
        command = [initdb, "-D", str(directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync"]
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        running = Server(pg_ctl, directory, _free_port(), user)
        running.start()
        try:
            yield running
        finally:
            running.control("-m", "immediate", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_calls_waiting_through_a_server_restart_get_the_decisions_made_after_it(server: Server) -> None:
    ran: list[int] = []
    agent = HumanLayer([], store=PostgresStore(server.dsn, schema="approvals"), listen=None)
    decider = HumanLayer([], store=PostgresStore(server.dsn, schema="approvals"), listen=None)
    async with agent, decider, anyio.create_task_group() as tg:

        @agent.require_approval()
        async def ship(order: int) -> int:
            ran.append(order)
            return order

        results: list[int] = []

        async def call(order: int) -> None:
            results.append(await ship(order))

        for order in range(6):
            tg.start_soon(call, order)
        pending = sorted(await wait_for_pending(agent, 6, within=5), key=lambda r: r.kwargs["order"])
        await decider.decide(pending[0].id, True, by="ops")  # before the restart
        with anyio.fail_after(10):
            while results != [0]:
                await anyio.sleep(0.01)

        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(StoreError):  # during the outage: refused, not lost in silence
            await decider.decide(pending[1].id, True, by="ops")
        await anyio.to_thread.run_sync(server.start)

        # After it: the decider's store reconnects; the agent's follower catches up.
        for request in pending[1:]:
            with anyio.fail_after(30):
                while True:
                    try:
                        await decider.decide(request.id, True, by="ops")
                        break
                    except StoreError:
                        await anyio.sleep(0.2)  # the pool is still reconnecting
        with anyio.fail_after(30):
            while len(results) < 6:
                await anyio.sleep(0.01)
    assert sorted(results) == list(range(6))
    assert sorted(ran) == list(range(6))  # each tool ran once
