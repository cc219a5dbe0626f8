"""The one page shape: clamping, the look-ahead row, and page counts."""

from __future__ import annotations

from portal.pagination import MAX_PAGE, MAX_PER_PAGE, Page, clamp_page, paginate

ROWS = list(range(45))


def _fetch(limit: int, offset: int) -> list[int]:
    return ROWS[offset : offset + limit]


def test_a_page_knows_whether_another_follows():
    first = paginate(_fetch, page=1, per_page=20, total=len(ROWS))
    assert first.items == list(range(20)) and first.has_next and first.pages == 3
    last = paginate(_fetch, page=3, per_page=20, total=len(ROWS))
    assert last.items == list(range(40, 45)) and not last.has_next


def test_page_numbers_and_sizes_are_clamped():
    assert clamp_page(None) == 1 and clamp_page(-4) == 1 and clamp_page(10**20) == MAX_PAGE
    assert paginate(_fetch, page=0, per_page=10**6).per_page == MAX_PER_PAGE
    assert not paginate(lambda limit, offset: [0] * limit, page=MAX_PAGE, per_page=1).has_next


def test_an_uncounted_page_has_no_page_count():
    assert Page([], 1, 10, None, False).pages is None
    assert Page([], 1, 10, 0, False).pages == 1
