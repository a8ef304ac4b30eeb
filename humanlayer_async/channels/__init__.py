"""Where approval requests go: the terminal, Slack, email, the web console, an HTTP API
and signed webhooks.

Each channel's module is imported when its name is first used: ``from
humanlayer_async.channels import SlackChannel`` loads the Slack SDK, ``import
humanlayer_async`` loads no channel's dependencies.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .base import Answered, BaseChannel, Channel, Decider, Principal

if TYPE_CHECKING:
    from .api import ApiChannel
    from .console import ConsoleChannel
    from .email import EmailChannel
    from .slack import SlackChannel
    from .web import WebChannel
    from .webhook import WebhookChannel

__all__ = [
    "Answered",
    "ApiChannel",
    "BaseChannel",
    "Channel",
    "ConsoleChannel",
    "Decider",
    "EmailChannel",
    "Principal",
    "SlackChannel",
    "WebChannel",
    "WebhookChannel",
]

if not TYPE_CHECKING:  # type checkers see the imports above, and an unknown name as an error
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "ApiChannel": ".api",
            "ConsoleChannel": ".console",
            "EmailChannel": ".email",
            "SlackChannel": ".slack",
            "WebChannel": ".web",
            "WebhookChannel": ".webhook",
        },
    )
