"""Where approval requests go: the terminal, and (as they land) Slack, email and the web console."""

from .base import BaseChannel, Channel, Decider
from .console import ConsoleChannel
from .email import EmailChannel
from .slack import SlackChannel
from .web import WebChannel

__all__ = [
    "BaseChannel",
    "Channel",
    "ConsoleChannel",
    "Decider",
    "EmailChannel",
    "SlackChannel",
    "WebChannel",
]
