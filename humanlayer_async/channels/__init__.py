"""Where approval requests go: the terminal, Slack, email and the web console.

Each channel's module is imported when its name is first used: ``from
humanlayer_async.channels import SlackChannel`` loads the Slack SDK, ``import
humanlayer_async`` loads no channel's dependencies.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .base import Answered, BaseChannel, Channel, Decider, Principal

if TYPE_CHECKING:
    from .console import ConsoleChannel
    from .email import EmailChannel
    from .slack import SlackChannel
    from .web import WebChannel

__all__ = [
    "Answered",
    "BaseChannel",
    "Channel",
    "ConsoleChannel",
    "Decider",
    "EmailChannel",
    "Principal",
    "SlackChannel",
    "WebChannel",
]

if not TYPE_CHECKING:  # type checkers see the imports above, and an unknown name as an error
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {
            "ConsoleChannel": ".console",
            "EmailChannel": ".email",
            "SlackChannel": ".slack",
            "WebChannel": ".web",
        },
    )
