"""Whether a host name is this machine: what may be reached over plain HTTP, or served
without a token (the CLI's ``--url``, the MCP proxy's ``--serve-http``)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.1``, ``::1``); never a name to resolve."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
