"""The audit trail's hash chains: how the durable stores link each entry to the one before it,
and how a trail is verified, read from a store or from an export of one.

Each request's entries form one chain, and each grant's (keyed by the grant's id) another,
so appends to different requests never wait for each other. An entry stores ``prev``, the
hash of its chain's entry before it (``None`` for the first), and ``hash``, taken over
``prev`` and the entry's canonical content (``content``: event, request id, the time as
stored, the fields as ``_codec.dumps`` writes them): SHA-256, or HMAC-SHA256 with an audit
key kept outside the database. The hash says which (``sha256:...``, ``hmac-sha256:...``).
Entries written before a store chained its entries have neither.

``Verifier`` checks a trail chain by chain and sums it up in a ``Head``: a digest over
every chain's newest hash, as of one ``seq``. A head recorded elsewhere catches what the
chains alone cannot: the newest entries of a chain cut off, a whole chain removed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from .._codec import dumps
from .._exceptions import ConfigurationError

__all__ = [
    "AUDIT_KEY_ENV",
    "ChainEntry",
    "ChainSource",
    "Head",
    "Problem",
    "Verdict",
    "Verifier",
    "at_text",
    "chain_source",
    "check_key",
    "content",
    "environment_key",
    "link",
    "read_export",
    "verify_store",
]

AUDIT_KEY_ENV = "HUMANLAYER_AUDIT_KEY"
MIN_KEY_BYTES = 16

_SHA256, _HMAC = "sha256:", "hmac-sha256:"
_HEAD = re.compile(r"([0-9]+):([0-9a-f]{64})")
_LINE_KEYS = frozenset({"seq", "request_id", "event", "at", "fields", "prev", "hash"})


def check_key(value: str | bytes | None) -> bytes | None:
    """The audit key as bytes (``None``: unkeyed chains); ``ConfigurationError`` when it is too
    short to be a secret. Messages never show it."""
    if value is None:
        return None
    key = value.encode() if isinstance(value, str) else bytes(value)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"an audit key must be at least {MIN_KEY_BYTES} bytes (32 random ones are best:"
            " python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def environment_key() -> bytes | None:
    """The audit key in ``$HUMANLAYER_AUDIT_KEY`` (unset or empty: none)."""
    return check_key(os.environ.get(AUDIT_KEY_ENV) or None)


def at_text(at: datetime) -> str:
    """An entry's time as its hash covers it: ISO 8601 in UTC, to the microsecond (a time
    without a zone is UTC, as PostgreSQL stores it)."""
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def content(event: str, request_id: str, at: datetime, fields: str) -> str:
    """What an entry's hash covers: ``[event, request_id, at, fields]`` as ``_codec.dumps``
    writes it, ``fields`` given as its canonical JSON text (what the store holds)."""
    start = dumps([event, request_id, at_text(at)], "audit entry")
    return f"{start[:-1]},{fields}]"


def link(key: bytes | None, prev: str | None, event: str, request_id: str, at: datetime, fields: str) -> str:
    """The hash of an entry that follows ``prev`` in its chain (``None``: it is the first)."""
    message = f"{prev or ''}\n{content(event, request_id, at, fields)}".encode()
    if key is None:
        return _SHA256 + hashlib.sha256(message).hexdigest()
    return _HMAC + hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One audit entry with its place in the trail (``seq``) and its chain's hashes
    (``None``: written before the store chained its entries)."""

    seq: int
    request_id: str
    event: str
    at: datetime
    fields: Any
    prev: str | None
    hash: str | None

    def to_line(self) -> str:
        """The entry as a line of ``humanlayer-async audit export`` (ASCII JSON)."""
        return json.dumps(
            {
                "seq": self.seq,
                "request_id": self.request_id,
                "event": self.event,
                "at": at_text(self.at),
                "fields": self.fields,
                "prev": self.prev,
                "hash": self.hash,
            }
        )

    @classmethod
    def from_line(cls, line: str) -> ChainEntry:
        """An export line read back; ``ValueError`` saying why it is not one."""
        data = json.loads(line)
        if not isinstance(data, dict) or set(data) != _LINE_KEYS:
            raise ValueError(f"an export line has exactly the keys {', '.join(sorted(_LINE_KEYS))}")
        texts = (data["request_id"], data["event"], data["at"])
        hashes = (data["prev"], data["hash"])
        if type(data["seq"]) is not int or not all(isinstance(text, str) for text in texts):
            raise ValueError("seq is a whole number, and request_id, event and at are text")
        if not all(value is None or isinstance(value, str) for value in hashes):
            raise ValueError("prev and hash are text or null")
        at = datetime.fromisoformat(data["at"])
        return cls(data["seq"], data["request_id"], data["event"], at, data["fields"], *hashes)


def read_export(lines: Iterable[str]) -> Iterator[ChainEntry]:
    """The entries of an export, blank lines skipped; ``ValueError`` naming the line that is not one."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield ChainEntry.from_line(line)
        except ValueError as exc:
            raise ValueError(f"line {number} is not an audit export line: {exc}") from None


@runtime_checkable
class ChainSource(Protocol):
    """A store that chains its audit entries: ``SQLiteStore`` and ``PostgresStore``."""

    def audit_chain(self) -> AsyncIterator[ChainEntry]:
        """Every audit entry, chain by chain (each oldest first), with its hashes: up to the
        newest entry before which no transaction can still add one."""
        ...


def chain_source(store: object) -> ChainSource:
    """``store`` as a ``ChainSource``; ``ConfigurationError`` for a store without chains."""
    if not isinstance(store, ChainSource):
        raise ConfigurationError(
            f"{store!r} keeps no hash chains: verifying or exporting the audit trail needs"
            " SQLiteStore or PostgresStore"
        )
    return store


@dataclass(frozen=True, slots=True)
class Head:
    """A digest over every chain's newest hash as of entry ``seq``; written ``seq:digest``,
    to be recorded elsewhere and given back to ``audit verify --expect-head``."""

    seq: int
    digest: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.digest}"

    @classmethod
    def parse(cls, text: str) -> Head:
        match = _HEAD.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a head as audit verify prints it (seq:64 hex digits)")
        return cls(int(match[1]), match[2])


def _digest(heads: dict[str, str]) -> str:
    """The digest of chain heads (chain id → its newest hash)."""
    digest = hashlib.sha256()
    for chain in sorted(heads):
        digest.update(f"{json.dumps([chain, heads[chain]])}\n".encode())
    return digest.hexdigest()


Flaw = Literal["modified", "deleted", "inserted", "reordered", "unhashed", "unkeyed", "moved", "truncated"]


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong with one chain, or with the trail's head (``seq`` ``None``)."""

    kind: Flaw
    message: str
    request_id: str | None = None
    position: int | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a trail came to: the chained ``entries`` checked in ``chains``, the ``unchained``
    older entries (written before the chains began: not checked), the ``head``, and the
    earliest ``problem`` found (``None``: none) of the ``broken`` chains and heads."""

    entries: int
    chains: int
    unchained: int
    head: Head
    problem: Problem | None
    broken: int


@dataclass(slots=True)
class _Lead:
    """A chain's entries before its first hash: how many, of how many in the chain, the first and last."""

    count: int
    total: int
    first: ChainEntry
    last: ChainEntry


def _owner(first: ChainEntry) -> str:
    return f"{'grant' if first.event.startswith('grant.') else 'request'} {first.request_id}"


def _where(entries: list[ChainEntry], index: int) -> str:
    """``request <id>: entry 3 of 7 (approval.decided at ..., seq 42)``, for messages."""
    entry = entries[index]
    return (
        f"{_owner(entries[0])}: entry {index + 1} of {len(entries)}"
        f" ({entry.event} at {entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, seq {entry.seq})"
    )


class Verifier:
    """Checks a trail fed to ``add`` chain by chain (a chain's entries together, oldest first);
    ``verdict()`` sums it up.

    With ``key`` every chained entry must be an HMAC with it; without, a keyed entry raises
    ``ConfigurationError`` (the key is needed to check it). ``expect``: a head recorded
    earlier, which the trail must still hold. Memory: one chain's entries, and each chain's
    newest hash.
    """

    def __init__(self, key: bytes | None, expect: Head | None = None) -> None:
        self._key, self._expect = key, expect
        self._chain: list[ChainEntry] = []
        self._done: set[str] = set()
        self._moved: set[str] = set()
        self._heads: dict[str, str] = {}
        self._held: dict[str, str] = {}  # each chain's newest hash up to expect.seq
        self._leads: dict[str, _Lead] = {}
        self._problems: list[Problem] = []
        self._entries = 0
        self._newest = 0
        self._start: int | None = None  # the first chained entry's seq: the chains began there

    def add(self, entry: ChainEntry) -> None:
        if self._chain and entry.request_id != self._chain[0].request_id:
            self._close()
        self._newest = max(self._newest, entry.seq)
        if not self._chain and entry.request_id in self._done:  # an export's lines moved apart
            if entry.request_id not in self._moved:
                self._moved.add(entry.request_id)
                self._problems.append(
                    Problem(
                        "moved",
                        f"{entry.request_id}: its entry of seq {entry.seq} comes after other chains'"
                        " entries, apart from the rest of its chain: lines were moved",
                        entry.request_id,
                        None,
                        entry.seq,
                    )
                )
            return
        self._chain.append(entry)

    def verdict(self) -> Verdict:
        if self._chain:
            self._close()
        problems = list(self._problems)
        unchained = 0
        for chain, lead in self._leads.items():
            if self._start is None or lead.last.seq < self._start:
                unchained += lead.count
                continue
            first = lead.first.seq > self._start
            entry, position = (lead.first, 1) if first else (lead.last, lead.count)
            problems.append(
                Problem(
                    "unhashed",
                    f"{_owner(lead.first)}: entry {position} of {lead.total} ({entry.event} at"
                    f" {entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, seq {entry.seq}) has no hash,"
                    f" though the trail is chained from seq {self._start} on: it was inserted, or its"
                    " hash removed (or a process older than the chains wrote it)",
                    chain,
                    position,
                    entry.seq,
                )
            )
        head = Head(self._newest, _digest(self._heads))
        expect = self._expect
        if expect is not None and expect.seq > self._newest:
            problems.append(
                Problem(
                    "truncated",
                    f"the trail ends at seq {self._newest}, before the recorded head's seq {expect.seq}:"
                    " its newest entries were deleted (or the head is another trail's)",
                )
            )
        elif expect is not None and _digest(self._held) != expect.digest:
            problems.append(
                Problem(
                    "truncated",
                    f"the trail no longer holds the head recorded at seq {expect.seq}: the newest"
                    " entries of a chain were cut off, or a whole chain removed (or the head is"
                    " another trail's)",
                )
            )
        problems.sort(key=lambda problem: (problem.seq is None, problem.seq or 0))
        return Verdict(
            self._entries,
            len(self._heads),
            unchained,
            head,
            problems[0] if problems else None,
            len(problems),
        )

    def _close(self) -> None:
        """Check the chain read so far."""
        entries, self._chain = self._chain, []
        chain = entries[0].request_id
        self._done.add(chain)
        lead = next((index for index, entry in enumerate(entries) if entry.hash is not None), len(entries))
        if lead:
            self._leads[chain] = _Lead(lead, len(entries), entries[0], entries[lead - 1])
        hashed = entries[lead:]
        if not hashed:
            return
        self._start = hashed[0].seq if self._start is None else min(self._start, hashed[0].seq)
        self._entries += len(hashed)
        self._heads[chain] = next(entry.hash for entry in reversed(hashed) if entry.hash is not None)
        if self._expect is not None:
            held = [e.hash for e in hashed if e.hash is not None and e.seq <= self._expect.seq]
            if held:
                self._held[chain] = held[-1]
        problem = self._check(entries, lead)
        if problem is not None:
            self._problems.append(problem)

    def _check(self, entries: list[ChainEntry], lead: int) -> Problem | None:
        """The first entry of the chain (from its first hash on) that is not where it was written."""
        expected: str | None = None
        for index in range(lead, len(entries)):
            entry = entries[index]
            if entry.hash is None:
                return self._problem(
                    "unhashed",
                    entries,
                    index,
                    "has no hash, though its chain began before it: it was inserted, or its hash"
                    " removed (or a process older than the chains wrote it)",
                )
            if entry.hash.startswith(_HMAC) and self._key is None:
                raise ConfigurationError(
                    f"the audit trail is keyed (HMAC-SHA256): set {AUDIT_KEY_ENV} to its key to verify it"
                )
            if self._key is not None and not entry.hash.startswith(_HMAC):
                return self._problem(
                    "unkeyed",
                    entries,
                    index,
                    "is not hashed with the audit key: it was forged (or written by a process"
                    f" without {AUDIT_KEY_ENV})",
                )
            intact = self._holds(entry, entry.prev, entry.hash)
            if intact and entry.prev == expected:
                expected = entry.hash
                continue
            return self._flaw(entries, index, expected, intact)
        return None

    def _flaw(self, entries: list[ChainEntry], index: int, expected: str | None, intact: bool) -> Problem:
        """What happened at ``entries[index]``, the first entry that does not check out."""
        entry, after = entries[index], entries[index + 1 :]
        if intact and entry.prev is not None and any(later.hash == entry.prev for later in after):
            return self._problem(
                "reordered", entries, index, "is out of order: it follows an entry stored after it"
            )
        if after and after[0].prev == expected and after[0].prev != entry.hash:
            return self._problem(
                "inserted",
                entries,
                index,
                "was inserted: the entry after it follows the one before it",
            )
        if not intact:
            twin = next(
                (
                    other
                    for other, candidate in enumerate(entries)
                    if other != index
                    and candidate.hash is not None
                    and self._holds(entry, candidate.prev, candidate.hash)
                ),
                None,
            )
            if twin is not None:
                return self._problem(
                    "reordered",
                    entries,
                    index,
                    f"holds what entry {twin + 1} was written with: entries were swapped",
                )
            return self._problem(
                "modified", entries, index, "was modified: its content no longer matches its hash"
            )
        if entry.prev is None:
            return self._problem(
                "inserted", entries, index, "was inserted: it begins a chain, after entries of that chain"
            )
        if expected is None:  # the chain's first chained entry
            return self._problem(
                "deleted", entries, index, "does not begin its chain: the entries before it were deleted"
            )
        if index >= 2 and entries[index - 2].hash == entry.prev:  # the one before it, hash and all
            return self._problem(
                "inserted", entries, index - 1, "was inserted: the entry after it follows the one before it"
            )
        return self._problem(
            "deleted",
            entries,
            index,
            "does not follow the entry before it: an entry between them was deleted (or the one"
            " before it rewritten, hash and all)",
        )

    def _holds(self, entry: ChainEntry, prev: str | None, digest: str) -> bool:
        """Whether ``digest`` is the hash of ``entry``'s content after ``prev``."""
        fields = dumps(entry.fields, f"fields of the audit entry of seq {entry.seq}")
        written = link(self._key, prev, entry.event, entry.request_id, entry.at, fields)
        return hmac.compare_digest(written.encode(), digest.encode())

    def _problem(self, kind: Flaw, entries: list[ChainEntry], index: int, what: str) -> Problem:
        entry = entries[index]
        return Problem(kind, f"{_where(entries, index)} {what}", entry.request_id, index + 1, entry.seq)


async def verify_store(store: object, key: bytes | None, expect: Head | None = None) -> Verdict:
    """Verify every chain of a durable store's audit trail."""
    verifier = Verifier(key, expect)
    async for entry in chain_source(store).audit_chain():
        verifier.add(entry)
    return verifier.verdict()
