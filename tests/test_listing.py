"""ListingGuard: when paging the workout list must stop, and when it may end."""

from __future__ import annotations

import pytest

from harvester.api import WorkoutPage
from harvester.errors import ListingError
from harvester.listing import ListingGuard, is_last_page


def page(ids: range | list[int], total: int | None, page_count: int | None = None,
         show_next: bool | None = None) -> WorkoutPage:
    return WorkoutPage([{"id": f"{i:032x}"} for i in ids], total, page_count, show_next)


def test_an_honest_listing_ends_on_its_last_page() -> None:
    """Three pages of 10 for a total of 25 end on page 2, without complaint."""
    guard = ListingGuard()
    assert not guard.finished(0, page(range(10), 25, 3))
    assert not guard.finished(1, page(range(10, 20), 25, 3))
    assert guard.finished(2, page(range(20, 25), 25, 3))
    assert guard.listed == 25


def test_arrivals_shifting_pages_are_not_a_repeat() -> None:
    """New workouts at the top push items across page borders: overlap is fine, a growing total too."""
    guard = ListingGuard()
    guard.finished(0, page(range(10), 30))
    assert not guard.finished(1, page(range(7, 17), 33))  # three arrived: three seen again
    assert guard.finished(2, page(range(17, 27), 33, show_next=False)) is True


def test_a_page_with_nothing_new_stops_the_listing() -> None:
    """The same ids again (a repeated page, ?page= dropped) raise ListingError naming the page."""
    guard = ListingGuard()
    guard.finished(0, page(range(10), 100))
    with pytest.raises(ListingError, match="page 1 of the workout list brought no workout"):
        guard.finished(1, page(range(10), 100))


def test_invalid_ids_repeated_forever_still_stop() -> None:
    """Items whose ids are not strings count too, so a page of them cannot repeat forever."""
    guard = ListingGuard()
    items = WorkoutPage([{"id": None}, {"id": 7}], None, None, None)
    guard.finished(0, items)
    with pytest.raises(ListingError):
        guard.finished(1, items)


def test_running_past_the_total_by_more_than_the_margin_stops() -> None:
    """A total of 20 allows 30 ids (margin 10), not 31."""
    guard = ListingGuard()
    guard.finished(0, page(range(30), 20))
    with pytest.raises(ListingError, match="ran past its stated total of 20"):
        guard.finished(1, page([30], 20))


def test_the_margin_grows_with_the_total() -> None:
    """5% of a large total: 1000 stated allows 1050 listed."""
    guard = ListingGuard()
    guard.finished(0, page(range(1050), 1000))
    with pytest.raises(ListingError):
        guard.finished(1, page([1050], 1000))


def test_ending_short_of_the_total_is_an_incomplete_listing() -> None:
    """A last page (page_count says so) with 10 of 60 listed raises instead of ending."""
    guard = ListingGuard()
    with pytest.raises(ListingError, match="with 10 of its stated 60 workouts"):
        guard.finished(0, page(range(10), 60, page_count=1))


def test_a_few_short_is_within_the_margin() -> None:
    """Deletes while paging can leave a few unlisted: 55 of 60 still ends the listing."""
    guard = ListingGuard()
    assert guard.finished(0, page(range(55), 60, show_next=False))


def test_without_a_total_only_repeats_stop_the_listing() -> None:
    """No total stated: pages end on an empty page, as before."""
    guard = ListingGuard()
    assert not guard.finished(0, page(range(10), None))
    assert guard.finished(1, page([], None))


@pytest.mark.parametrize(("listing", "number", "last"), [
    (page([], 10), 0, True),
    (page(range(5), 10, show_next=False), 0, True),
    (page(range(5), 10, page_count=2), 0, False),
    (page(range(5), 10, page_count=2), 1, True),
    (page(range(5), None), 7, False),
])
def test_last_page_signals(listing: WorkoutPage, number: int, last: bool) -> None:
    """An empty page, show_next false, or page_count reached end a listing; nothing else does."""
    assert is_last_page(number, listing) is last
