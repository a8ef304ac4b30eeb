"""Reading an emailed reply: strip what was quoted, then find a clear answer on the first line."""

from __future__ import annotations

import re

__all__ = ["ANSWER_HELP", "QUESTION_HELP", "parse_answer", "strip_quotes", "utf8_safe"]

ANSWER_HELP = (
    "Reply with your answer on the first line, above the quoted text:\n"
    "  approve\n"
    "  deny: <reason>\n"
    "(approved, yes and lgtm also approve; denied, reject, rejected and no also deny; "
    "a reason may follow the word after a colon, comma, dash or full stop.)"
)
"""How to answer an approval request by email, as told in the request and in the help reply."""

QUESTION_HELP = "Reply to this email: the text of your reply, above the quoted message, is the answer."
"""How to answer a question by email."""

_APPROVE = frozenset({"approve", "approved", "yes", "lgtm"})
_ANSWER = re.compile(
    # A full stop or dash must end the word ("No.1 priority" and "no-brainer" are not answers).
    r"(approve|approved|yes|lgtm|deny|denied|reject|rejected|no)(?:\s*(?:[:,]|[.-](?=\s|$))\s*(.*))?",
    re.IGNORECASE | re.DOTALL,
)

# Where the quoted message starts, in the replies of common mail clients.
_ATTRIBUTION = re.compile(
    r"^(?:On|Le|Am|El|Il|Op)\s.+(?:wrote|a écrit|schrieb|escribió|ha scritto|schreef)\s?:$",
    re.IGNORECASE,
)
_SEPARATORS = (
    re.compile(r"^-{2,}\s*(?:Original Message|Forwarded message)\s*-{2,}$", re.IGNORECASE),  # Outlook, Gmail
    re.compile(r"^_{10,}$"),  # Outlook on the web, above its From:/Sent: block
    re.compile(r"^--$"),  # the signature delimiter "-- "
    re.compile(r"^Sent from my \w+", re.IGNORECASE),  # mobile clients
)
_HEADER_BLOCK_START = re.compile(r"^\*?From:\*?\s", re.IGNORECASE)
_HEADER_BLOCK_NEXT = re.compile(r"^\*?(?:Sent|Date|To|Subject):\*?\s", re.IGNORECASE)


def _quote_starts(lines: list[str], index: int) -> bool:
    """Whether the quoted message begins at ``lines[index]``."""
    line = lines[index].strip()
    following = [text.strip() for text in lines[index + 1 : index + 4]]
    if _ATTRIBUTION.match(line) or any(separator.match(line) for separator in _SEPARATORS):
        return True
    # Gmail wraps a long attribution: "On Tue, ... Approvals <" / "approvals+...> wrote:"
    if (
        following
        and re.match(r"^(?:On|Le|Am|El|Il|Op)\s", line)
        and _ATTRIBUTION.match(f"{line} {following[0]}")
    ):
        return True
    # Outlook: a "From: ..." line followed by "Sent:"/"Date:"/"To:"/"Subject:" lines.
    return bool(_HEADER_BLOCK_START.match(line)) and any(_HEADER_BLOCK_NEXT.match(text) for text in following)


def utf8_safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates, from JSON escapes) as ``?``."""
    return text.encode("utf-8", "replace").decode("utf-8")


def strip_quotes(text: str) -> str:
    """The reply's own text: no quoted lines (``> ...``), nothing from the quoted message on.

    Recognises the attribution lines of Gmail, Apple Mail and Thunderbird ("On ... wrote:"),
    Outlook's "-----Original Message-----" and "From:/Sent:" blocks, the signature delimiter
    and "Sent from my ..." footers. Inline answers between quoted lines are kept.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if _quote_starts(lines, index):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line.rstrip())
    return utf8_safe("\n".join(kept).strip())


def parse_answer(text: str) -> tuple[bool, str | None] | None:
    """``(approved, reason)`` when the first non-empty line is a clear answer, else ``None``.

    A clear answer is one of the words alone, or followed by ``:``, ``,``, ``-`` or ``.``
    and a reason: ``deny: vendor not verified``, ``Approved, go ahead``. "No problem, go
    ahead" and "not approved" are not answers.
    """
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    match = _ANSWER.fullmatch(first)
    if match is None:
        return None
    reason = (match.group(2) or "").strip()
    return match.group(1).lower() in _APPROVE, reason or None
