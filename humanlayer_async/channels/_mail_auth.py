"""Sender checks: the SPF, DKIM and DMARC verdicts on a reply, and whether one vouches for its From domain.

A pass counts only when it speaks for the From domain itself (strict alignment: the same
domain, compared without regard to case; a subdomain or a parent does not align):

- DMARC: a pass whose ``header.from`` is the From domain;
- SPF: a pass for an envelope sender (``MAIL FROM``) whose domain is the From domain;
- DKIM: a pass for a signature whose ``d=`` is the From domain.

A verdict that names no domain counts as none. Failures refuse whoever they name: SPF
``fail`` or ``softfail``, DMARC ``fail``, DKIM ``fail`` when no signature passed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Verdict",
    "authentication_results",
    "domain_of",
    "failed_check",
    "received_spf",
    "sender_check",
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's result: ``method`` is ``spf``, ``dkim`` or ``dmarc``, ``result`` lowercase.

    ``domain`` is the domain the result speaks for: the envelope sender's for SPF, the
    signature's ``d=`` for DKIM, the ``From`` header's for DMARC; ``None`` when unnamed.
    """

    method: str
    result: str
    domain: str | None = None


def domain_of(address: str | None) -> str | None:
    """The domain of ``local@domain`` (or of a bare ``domain``), lowercase; ``None`` if empty."""
    domain = (address or "").strip().strip("<>").rpartition("@")[2].strip().rstrip(".").lower()
    return domain or None


def failed_check(verdicts: Iterable[Verdict]) -> str | None:
    """The failing check among ``verdicts``, as ``"spf=fail"``, or ``None``.

    SPF fails on ``fail`` or ``softfail``, DMARC on ``fail``, DKIM on ``fail`` when no
    signature passed (a message may carry several).
    """
    verdicts = list(verdicts)
    for verdict in verdicts:
        if (verdict.method == "spf" and verdict.result in {"fail", "softfail"}) or (
            verdict.method == "dmarc" and verdict.result == "fail"
        ):
            return f"{verdict.method}={verdict.result}"
    dkim = {verdict.result for verdict in verdicts if verdict.method == "dkim"}
    if "fail" in dkim and "pass" not in dkim:
        return "dkim=fail"
    return None


def sender_check(
    sender: str, reported: Sequence[Verdict], seen: Sequence[Verdict] = (), *, required: bool
) -> str | None:
    """Why the verdicts do not vouch for the domain of ``sender`` (the From address), or ``None``.

    ``reported`` are the verdicts the provider itself vouches for, where a pass may count;
    ``seen`` are others found in the message's headers, which anyone may have written: only
    their failures count. With ``required``, a mail without any reported verdict is refused;
    without, it passes (a bridge of your own that checks nothing).
    """
    failing = failed_check([*reported, *seen])
    if failing:
        return f"the message failed its sender checks ({failing})"
    if not reported:
        return "the provider reported no SPF, DKIM or DMARC verdict" if required else None
    from_domain = domain_of(sender)
    if from_domain and any(
        verdict.result == "pass" and verdict.domain == from_domain for verdict in reported
    ):
        return None
    return f"no SPF, DKIM or DMARC pass for {from_domain}, the From domain"


# -- RFC 8601 Authentication-Results and RFC 7208 Received-SPF --------------------------------

_PAIR = re.compile(r'([A-Za-z0-9_.-]+(?:/[0-9]+)?)\s*=\s*((?:"(?:[^"\\]|\\.)*"|[^\s";])+)')
_PROPERTY = {"spf": "smtp.mailfrom", "dkim": "header.d", "dmarc": "header.from"}


def _statements(text: str) -> list[str]:
    """``text`` split at the semicolons outside quoted strings, its comments blanked out.

    Comments are RFC 5322's: in parentheses, nested, with backslash escapes.
    """
    statements: list[str] = []
    kept: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
            char = " "
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth, char = 1, " "
        elif char == '"':
            quoted = True
        elif char == ";":
            statements.append("".join(kept))
            kept = []
            continue
        if not depth:
            kept.append(char)
    statements.append("".join(kept))
    return statements


def _pairs(statement: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of ``statement`` in order: keys lowercase, values unquoted."""
    return [
        (key.lower(), re.sub(r'\\(.)|"', lambda match: match.group(1) or "", value))
        for key, value in _PAIR.findall(statement)
    ]


def authentication_results(value: str) -> list[Verdict]:
    """The SPF, DKIM and DMARC verdicts of one ``Authentication-Results`` header (RFC 8601).

    The first statement (the authserv-id) is skipped; each result's domain is read from its
    own ``smtp.mailfrom``, ``header.d`` or ``header.from`` property, never from a comment.
    """
    verdicts = []
    for statement in _statements(value)[1:]:
        pairs = _pairs(statement)
        if not pairs:
            continue
        method, result = pairs[0][0].partition("/")[0], pairs[0][1].lower()
        if method not in _PROPERTY:
            continue
        named = next((found for key, found in pairs[1:] if key == _PROPERTY[method]), None)
        verdicts.append(Verdict(method, result, domain_of(named)))
    return verdicts


def received_spf(value: str | None) -> Verdict | None:
    """The verdict of a ``Received-SPF`` header (RFC 7208): its result, for ``envelope-from``'s domain.

    A pass for the HELO identity (``identity=helo``) names no envelope sender.
    """
    text = " ".join(_statements(value or ""))
    words = text.split()
    if not words:
        return None
    pairs = dict(reversed(_pairs(text)))  # the first of a repeated key
    identity = pairs.get("identity", "mailfrom").lower()
    domain = domain_of(pairs.get("envelope-from")) if identity == "mailfrom" else None
    return Verdict("spf", words[0].strip(";").lower(), domain)
