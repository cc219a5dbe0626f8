"""One shape for a page of results, and the one place page numbers and sizes are clamped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Deep OFFSETs scan every skipped row, so page numbers stop here; no list a member pages through is that long.
MAX_PAGE = 100_000  # keeps OFFSET in range; past it a list is searched or filtered, not paged
MAX_PER_PAGE = 100


@dataclass(frozen=True)
class Page(Generic[T]):
    """``items`` of page ``page``; ``total`` is ``None`` where counting would cost more than the page itself."""

    items: list[T]
    page: int
    per_page: int
    total: int | None
    has_next: bool

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, -(-self.total // self.per_page))


def clamp_page(page: int | None) -> int:
    """A 1-based page number within ``1..MAX_PAGE``, whatever the query string said."""
    return min(max(page or 1, 1), MAX_PAGE)


def paginate(
    fetch: Callable[[int, int], Sequence[T]], *, page: int, per_page: int, total: int | None = None
) -> Page[T]:
    """Call ``fetch(limit, offset)`` for one page plus one row, which tells whether another page follows."""
    page, per_page = clamp_page(page), min(max(per_page, 1), MAX_PER_PAGE)
    rows = list(fetch(per_page + 1, (page - 1) * per_page))
    return Page(rows[:per_page], page, per_page, total, len(rows) > per_page and page < MAX_PAGE)
