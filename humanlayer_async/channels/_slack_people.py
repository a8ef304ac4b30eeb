"""Who a Slack user is, for approver lists: their email and user groups, asked of Slack, cached.

One person is one approver whatever the channel: a decision made in Slack records the
clicking user's email as ``by`` when Slack shares it (scope ``users:read.email``), with the
user id beside it, and approver lists may name them by user id (``U...``), email, or a user
group they belong to (``S...``, scope ``usergroups:read``). Answers are cached for ``ttl``
seconds: a person removed from a group may still decide for that long.

Also where a request addressed to a person goes: a user id or an email opens (once) the
app's direct-message channel with them (``conversations.open``, scope ``im:write``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from .._audit import logger
from .._exceptions import ChannelError
from .._models import Principal
from . import _slack_blocks as blocks

__all__ = ["GROUP", "USER", "Call", "People", "dig"]

USER = re.compile(r"[UW][A-Z0-9]{2,}")
"""A Slack user id."""
GROUP = re.compile(r"S[A-Z0-9]{2,}")
"""A Slack user group id."""
TTL = 300.0
"""Seconds an answer about a person or a group is kept."""

Call = Callable[..., Awaitable[Mapping[str, Any]]]
"""``call(method, **params)``: one Web API call (retried as every other), its JSON answer,
``{"ok": false, "error": ...}`` when Slack says no; raises ``ChannelError`` when Slack
cannot answer (a missing scope, an outage)."""

V = TypeVar("V")


class People:
    """The Slack workspace's people as approver lists need them, through ``call``."""

    def __init__(self, call: Call, *, ttl: float = TTL) -> None:
        self._call = call
        self._ttl = ttl
        self._emails: dict[str, tuple[float, str | None]] = {}
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._users: dict[str, tuple[float, str]] = {}
        self._ims: dict[str, str] = {}  # a user id → the app's DM channel with them (never changes)

    async def principal(self, user: str, approvers: Iterable[str], *, requester: str | None) -> Principal:
        """``user`` as a principal: their email (when Slack shares it) and the groups of
        ``approvers`` they belong to.

        Raises ``ChannelError`` when Slack cannot say what the check needs: the email when
        ``approvers`` or ``requester`` name someone by email, a group's members.
        """
        names = {*approvers, *(() if requester is None else (requester,))}
        try:
            email = await self.email(user)
        except ChannelError as exc:
            if any("@" in name for name in names):
                raise
            logger.warning("slack.email_unknown", user=user, error=str(exc))
            email = None
        if email is None and requester is not None and "@" in requester:  # fail closed: it may be them
            raise ChannelError(f"Slack shares no email for {user} (scope users:read.email)")
        groups = frozenset(
            [name for name in names if GROUP.fullmatch(name) and user in await self.members(name)]
        )
        return Principal(email or user, user if email else None, groups)

    async def email(self, user: str) -> str | None:
        """The email on ``user``'s profile, lower-cased; ``None`` when Slack shows none."""

        async def ask() -> str | None:
            answer = await self._call("users.info", user=user)
            email = dig(answer, "user", "profile", "email")
            if not answer.get("ok"):
                logger.info("slack.no_email", user=user, error=answer.get("error"))
                return None
            if not isinstance(email, str) or "@" not in email:
                logger.info("slack.no_email", user=user, hint="the Slack app needs users:read.email")
                return None
            return email.lower()

        return await _cached(self._emails, user, self._ttl, ask)

    async def members(self, group: str) -> frozenset[str]:
        """The user ids in user group ``group``."""

        async def ask() -> frozenset[str]:
            answer = await self._call("usergroups.users.list", usergroup=group)
            users = answer.get("users")
            return (
                frozenset(u for u in users if isinstance(u, str)) if isinstance(users, list) else frozenset()
            )

        return await _cached(self._members, group, self._ttl, ask)

    async def user(self, email: str) -> str:
        """The user id of whoever has ``email`` (``users.lookupByEmail``)."""

        async def ask() -> str:
            answer = await self._call("users.lookupByEmail", email=email)
            found = dig(answer, "user", "id")
            if not isinstance(found, str) or not USER.fullmatch(found):
                raise ChannelError(f"Slack knows no user with the email {email!r}: {answer.get('error')}")
            return found

        return await _cached(self._users, email.lower(), self._ttl, ask)

    async def destination(self, target: str) -> str:
        """Where to post for ``target``: a channel as it is; a person's DM channel."""
        if "@" in target:
            target = await self.user(target)
        elif not USER.fullmatch(target):
            return target  # a channel id, a #name, an existing DM
        im = self._ims.get(target)
        if im is None:
            answer = await self._call("conversations.open", users=target)
            opened = dig(answer, "channel", "id")
            if not isinstance(opened, str):
                raise ChannelError(f"Slack opened no direct message with {target}: {answer.get('error')}")
            im = self._ims[target] = opened
        return im

    async def mention(self, approver: str) -> blocks.Mrkdwn | None:
        """``approver`` as a Slack mention (``<@U...>``, ``<!subteam^S...>``); ``None`` if unknown."""
        if USER.fullmatch(approver):
            return blocks.markup(
                "<@{}>", blocks.escape(approver)
            )  # letters and digits: escaping changes nothing
        if GROUP.fullmatch(approver):
            return blocks.markup("<!subteam^{}>", blocks.escape(approver))
        if "@" in approver:
            try:
                return blocks.markup("<@{}>", blocks.escape(await self.user(approver)))
            except ChannelError as exc:
                logger.warning("slack.mention_failed", approver=approver, error=str(exc))
        return None


async def _cached(
    cache: dict[str, tuple[float, V]], key: str, ttl: float, ask: Callable[[], Awaitable[V]]
) -> V:
    now = time.monotonic()
    found = cache.get(key)
    if found is not None and found[0] > now:
        return found[1]
    value = await ask()
    cache[key] = (now + ttl, value)
    if len(cache) > 2 * _CACHE_SIZE:  # forget the expired answers now and then
        for stale in [k for k, (until, _) in cache.items() if until <= now]:
            del cache[stale]
    return value


_CACHE_SIZE = 10_000
"""Cached answers of one kind before expired ones are dropped."""


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...`` through JSON objects; ``None`` where something is missing."""
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data
