"""A page of pending requests and how many there are in all: what the CLI, the API and the web
console show, so that none of them reads every pending request of a large store.

Pages are keyset pages in the store's order (``created_at``, then ``id``): the next page starts
after the last request of this one (``after=``), so a request decided meanwhile shifts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypedDict, Unpack

from ._models import ApprovalRequest, Kind

__all__ = ["MAX_PAGE", "Filters", "Lister", "Page", "read_page"]

MAX_PAGE = 1000
"""The most requests one page may hold (the API's ``limit``, the CLI's ``--limit``)."""


class Filters(TypedDict, total=False):
    """``Store.list_pending``'s filters, as ``count_pending`` takes them too."""

    run_id: str | None
    kind: Kind | None
    function: str | None
    older_than: float | timedelta | None
    id_prefix: str | None


class Lister(Protocol):
    """What lists and counts pending requests: a store's ``Decisions``, a channel's ``Decider``."""

    async def pending(
        self, *, after: str | None = None, limit: int | None = None, **filters: Unpack[Filters]
    ) -> list[ApprovalRequest]: ...

    async def count_pending(self, **filters: Unpack[Filters]) -> int: ...


@dataclass(frozen=True, slots=True)
class Page:
    """Up to a page of pending requests, oldest first."""

    requests: list[ApprovalRequest]
    next: str | None
    """What to pass as ``after`` for the next page (this page's last id); ``None``: the last page."""
    total: int
    """How many pending requests the filters keep, on every page (counted a moment apart from
    the page: it may be off by the requests made or decided in between)."""


async def read_page(
    source: Lister, *, limit: int, after: str | None = None, **filters: Unpack[Filters]
) -> Page:
    """The ``limit`` oldest pending requests after ``after`` that ``filters`` keep, and how many
    there are in all: one read of ``limit + 1`` (does a next page exist?), and a count only when
    this is not the one page there is."""
    found = await source.pending(after=after, limit=limit + 1, **filters)
    shown = found[:limit]
    more = len(found) > limit
    total = await source.count_pending(**filters) if more or after is not None else len(shown)
    return Page(shown, shown[-1].id if more else None, max(total, len(shown)))
