"""aiohttp connections whose host names are looked up on the library's own threads.

aiohttp's default resolver calls ``loop.getaddrinfo``, which runs in the application's
default executor; sync tools waiting for a human may hold every thread of it (see
``humanlayer_async._threads``). Slack's sessions connect through ``connector()`` instead.
"""

from __future__ import annotations

import functools
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .. import _threads

__all__ = ["ThreadsResolver", "connector"]

_ADDRCONFIG = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", socket.AI_ADDRCONFIG)
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV  # what the results are: numeric
_NUMERIC_NAME = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


class ThreadsResolver(AbstractResolver):
    """Resolves with ``getaddrinfo`` on the library's threads, as aiohttp's threaded resolver
    does in the default executor."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = await _threads.getaddrinfo(host, port, family=family, flags=_ADDRCONFIG)
        except socket.gaierror:
            if host.rstrip(".").lower() != "localhost":
                raise
            # Without a network (and on Windows), AI_ADDRCONFIG can hide the loopback addresses.
            infos = await _threads.getaddrinfo(host, port, family=family)
        results: list[ResolveResult] = []
        for found, _, proto, _, address in infos:
            match address:
                case (str(), int(), int(), int(scope)) if scope:
                    # A link-local IPv6 address: its host must carry the scope ("fe80::1%eth0").
                    lookup = functools.partial(socket.getnameinfo, address, _NUMERIC_NAME)
                    ip, service = await _threads.run_sync(lookup, abandon_on_cancel=True)
                    number = int(service)
                case (str(ip), int(number), *_):
                    pass
                case _:
                    continue  # an IPv6 address, and a Python built without IPv6
            found_at = ResolveResult(
                hostname=host, host=ip, port=number, family=found, proto=proto, flags=_NUMERIC
            )
            results.append(found_at)
        return results

    async def close(self) -> None:
        pass


def connector() -> aiohttp.TCPConnector:
    """A connector (for ``aiohttp.ClientSession(connector=...)``) resolving with ``ThreadsResolver``."""
    return aiohttp.TCPConnector(resolver=ThreadsResolver())
