"""``Refused``: the one way an inbound route declines a request, and its one log event.

Every route a channel serves on the listener (Slack's callbacks, the inbound-mail webhooks,
the web console) raises ``Refused`` for a request it does not act on: a bad signature, a
malformed body, an unknown request, a sender who may not decide. The listener's app has one
handler for it (``listener.build_app``), which answers with the refusal's status and body and
logs one ``listener.refused`` event with the path, method, client, status, reason and the
refusal's own fields, whatever the channel. Slack's Socket Mode, which has no HTTP answer to
give, logs the same event through ``log``.

Nothing here imports starlette: channels raise it without loading the listener.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._audit import logger

__all__ = ["EVENT", "Refused"]

EVENT = "listener.refused"
"""The log event of every refused inbound request."""


class Refused(Exception):
    """An inbound request declined: answered with ``status`` (4xx, or 503 to be retried).

    Args:
        status: The HTTP status to answer with.
        reason: Why, in a few words; logged, and the answer's body when ``body`` is not given.
            Never a secret: keys, codes and cookies stay out of it.
        body: What the client is told, when it differs from ``reason`` (an HTML page, a
            Slack ``mrkdwn`` text).
        media_type: The body's type: ``text/plain`` or ``text/html``.
        headers: Headers of the answer (the web console's security headers).
        **fields: More context for the log line only (a request id, a sender), never in
            the answer.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        body: str | None = None,
        media_type: str = "text/plain",
        headers: Mapping[str, str] | None = None,
        **fields: object,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = reason if body is None else body
        self.media_type = media_type
        self.headers = dict(headers or {})
        self.fields = fields

    def log(self, **where: object) -> None:
        """Log the refusal as ``listener.refused``; ``where`` tells where it came in (path, method)."""
        logger.warning(EVENT, **{**where, **self.fields, "status": self.status, "reason": self.reason})
