from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog


def _watched_loop() -> asyncio.AbstractEventLoop:
    # asyncio's debug mode logs every callback that holds the loop longer than this.
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 1.0
    return loop


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"loop_factory": _watched_loop}


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and "took" in message:
            self.messages.append(message)


@pytest.fixture(autouse=True)
def _loop_never_blocks() -> Iterator[None]:
    """Fail a test during which any callback held the event loop for over a second."""
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"the event loop was blocked: {handler.messages}"


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    # Events are still processed (so capture_logs sees them), then dropped instead of printed.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()


# -- durable stores: real PostgreSQL (HUMANLAYER_TEST_DSN) and real SQLite files ----------

PG_DSN = os.environ.get("HUMANLAYER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_run(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's DSN; skips when it is unreachable, except under CI=true (fails)."""
    try:
        _pg_run("SELECT 1")
    except Exception as exc:
        reason = f"PostgreSQL is unreachable at HUMANLAYER_TEST_DSN ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of its own for one test (parallel runs never meet), dropped afterwards."""
    schema = f"hl_test_{secrets.token_hex(6)}"
    yield schema
    _pg_run(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A durable store's URL: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'approvals.db'}"
    return f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"
