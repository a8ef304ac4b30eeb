"""Reply tokens: the signed part of ``approvals+<token>@...`` that ties a reply to a request.

A token carries the request id, the index of the recipient in the channel's ``to`` list,
and an HMAC over both and the recipient's address, all in lowercase base32 (mail systems
lowercase local parts). A reply is matched without trusting its subject, and a guessed
token, or one meant for another recipient, does not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = ["TOKEN_LENGTH", "ReplyTokens"]

_ID_BYTES = 16
_MAC_BYTES = 10
_PAYLOAD_BYTES = _ID_BYTES + 1 + _MAC_BYTES
TOKEN_LENGTH = -(-_PAYLOAD_BYTES * 8 // 5)
"""Characters in a token: 44, so ``approvals+<token>`` fits the 64 a local part may have."""

_DOMAIN = b"humanlayer-async/email-reply-token\x00"
_HEX_ID = re.compile(r"[0-9a-f]{32}")


class ReplyTokens:
    """Makes and reads reply tokens keyed by ``secret``.

    Request ids must be 32 hex digits (what ``HumanLayer`` makes); at most 256 recipients.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "ReplyTokens(secret=***)"

    def _mac(self, request_id: bytes, index: int, recipient: str) -> bytes:
        message = _DOMAIN + request_id + bytes([index]) + recipient.lower().encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, request_id: str, index: int, recipient: str) -> str:
        """The token for ``recipient`` (``to[index]``) of request ``request_id``.

        Raises ``ValueError`` for an id that is not 32 hex digits or an index over 255.
        """
        if not _HEX_ID.fullmatch(request_id) or not 0 <= index < 256:
            raise ValueError("reply tokens need a 32-hex-digit request id and a recipient index under 256")
        raw_id = bytes.fromhex(request_id)
        payload = raw_id + bytes([index]) + self._mac(raw_id, index, recipient)
        return base64.b32encode(payload).decode().rstrip("=").lower()

    def read(self, token: str, recipients: Sequence[str]) -> tuple[str, int] | None:
        """``(request id, recipient index)`` when ``token`` verifies against ``recipients``, else ``None``."""
        if len(token) != TOKEN_LENGTH:
            return None
        try:
            payload = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            return None
        raw_id, index, mac = payload[:_ID_BYTES], payload[_ID_BYTES], payload[_ID_BYTES + 1 :]
        if index >= len(recipients):
            return None
        if not hmac.compare_digest(mac, self._mac(raw_id, index, recipients[index])):
            return None
        return raw_id.hex(), index
