"""The web console's credentials: keys, single-use sign-in codes, signed session cookies.

Codes and cookies are ``<user>.<fields>.<mac>`` in base64url: the user's name, a JSON
list of fields, and an HMAC-SHA256 of both and of what the value is (a code or a
session), keyed by a key derived from that user's own key. Nothing is parsed before the
MAC verifies. Every process configured with the same keys accepts what any of them
signed, and nothing is kept on the server but a code's single use (claimed in the store
by the caller). Changing a user's key invalidates their codes and sessions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Code", "Credentials", "Session"]

_DOMAIN = b"humanlayer-async/web-console\x00"

Purpose = Literal["code", "session"]


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in user. ``csrf`` is ``None`` when the key came in an ``Authorization`` header."""

    user: str
    csrf: str | None


@dataclass(frozen=True, slots=True)
class Code:
    """A sign-in code that verified: whose, until when (epoch seconds), and its nonce."""

    user: str
    expires: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Credentials:
    """The console's keys by user, and the codes and cookies signed with them.

    Args:
        keys: ``{user: key}``.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)
        self._signing = {
            user: hmac.new(key.encode(), _DOMAIN, hashlib.sha256).digest() for user, key in keys.items()
        }

    def __repr__(self) -> str:
        return f"Credentials(users={sorted(self._keys)!r})"

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def owner(self, key: str) -> str | None:
        """Whose key ``key`` is (compared with every key, in constant time)."""
        found = None
        for user, candidate in self._keys.items():
            if hmac.compare_digest(candidate.encode(), key.encode()):
                found = user
        return found

    def _mac(self, purpose: Purpose, user: str, signed: str) -> bytes:
        return hmac.new(self._signing[user], f"{purpose}:{signed}".encode(), hashlib.sha256).digest()

    def _sign(self, purpose: Purpose, user: str, *fields: object) -> str:
        signed = f"{_b64(user.encode())}.{_b64(json.dumps(fields, separators=(',', ':')).encode())}"
        return f"{signed}.{_b64(self._mac(purpose, user, signed))}"

    def _verify(self, purpose: Purpose, value: str) -> tuple[str, list[Any]] | None:
        """The user and the signed fields when ``value`` verifies, else ``None``."""
        signed, _, mac = value.rpartition(".")
        try:
            user = _unb64(signed.partition(".")[0]).decode()
            valid = user in self._signing and hmac.compare_digest(
                _unb64(mac), self._mac(purpose, user, signed)
            )
        except (ValueError, binascii.Error):  # not base64, not UTF-8
            return None
        if not valid:
            return None
        return user, json.loads(_unb64(signed.partition(".")[2]))

    def code(self, user: str, lifetime: float) -> str:
        """A new sign-in code for ``user``, valid for ``lifetime`` seconds (once: see ``Code``)."""
        return self._sign("code", user, int(time.time() + lifetime), secrets.token_urlsafe(16))

    def read_code(self, value: str) -> Code | None:
        """The code when ``value`` is one signed with a current key (expired or not), else ``None``."""
        verified = self._verify("code", value)
        if verified is None:
            return None
        user, (expires, nonce) = verified
        return Code(user, expires, nonce)

    def session(self, user: str, lifetime: float) -> str:
        """A new session cookie for ``user``, with a new CSRF secret, valid for ``lifetime`` seconds."""
        return self._sign("session", user, int(time.time() + lifetime), secrets.token_urlsafe(24))

    def read_session(self, value: str) -> Session | None:
        """The session when ``value`` is an unexpired cookie signed with a current key."""
        verified = self._verify("session", value)
        if verified is None:
            return None
        user, (expires, csrf) = verified
        return Session(user, csrf) if expires > time.time() else None
