from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

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
