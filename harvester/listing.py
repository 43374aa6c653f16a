"""Stop rules for paging the workout list, so no server can make a listing endless or short.

A listing pages ``/api/user/{id}/workouts`` until the server says it ended (an
empty page, ``show_next: false``, or ``page_count`` pages). A broken or hostile
server can keep it going forever (a repeated page, a proxy that drops ``?page=``
and answers page 0 every time, a ``total`` it runs past) or end it early (a
``page_count`` that lies). ``ListingGuard`` watches every page and turns each of
those into a ``ListingError``, which the caller records as a failure of the
listing: the run exits 3 and the listing is never taken as complete (no
watermark move, nothing inferred from it).
"""

from __future__ import annotations

import math

from harvester.api import WorkoutPage
from harvester.errors import ListingError

# How far the ids listed may stray from the stated total: new workouts arriving or
# old ones deleted while the list is paged shift a few items across page borders.
DEFAULT_TOTAL_SLACK = 10
DEFAULT_TOTAL_SLACK_FRACTION = 0.05


def is_last_page(page: int, listing: WorkoutPage) -> bool:
    """Whether the server says ``listing`` (page number ``page``, from 0) ends the list."""
    return not listing.items or listing.show_next is False or (
        listing.page_count is not None and page + 1 >= listing.page_count
    )


class ListingGuard:
    """Sees each page of one listing; raises ListingError when the listing cannot be trusted."""

    def __init__(self, *, slack: int = DEFAULT_TOTAL_SLACK,
                 slack_fraction: float = DEFAULT_TOTAL_SLACK_FRACTION) -> None:
        self._slack = slack
        self._slack_fraction = slack_fraction
        self._keys: set[str] = set()  # every item seen, valid id or not
        self.total: int | None = None  # the newest `total` the server stated

    @property
    def listed(self) -> int:
        return len(self._keys)

    def finished(self, page: int, listing: WorkoutPage) -> bool:
        """Account for ``listing``; True when it is the last page, ListingError if it is wrong."""
        before = len(self._keys)
        self._keys.update(_key(item.get("id")) for item in listing.items)
        if listing.total is not None:
            self.total = listing.total
        if listing.items and len(self._keys) == before:
            raise ListingError(
                f"page {page} of the workout list brought no workout not already listed (the "
                "server repeats a page, or a proxy drops the ?page= parameter); listing stopped")
        margin = self._margin()
        if self.total is not None and len(self._keys) > self.total + margin:
            raise ListingError(
                f"the workout list ran past its stated total of {self.total} (page {page}, "
                f"{len(self._keys)} listed); listing stopped")
        last = is_last_page(page, listing)
        if last and self.total is not None and len(self._keys) < self.total - margin:
            raise ListingError(
                f"the workout list ended after page {page} with {len(self._keys)} of its stated "
                f"{self.total} workouts (page_count or show_next is wrong); listing incomplete")
        return last

    def _margin(self) -> int:
        return max(self._slack, math.ceil((self.total or 0) * self._slack_fraction))


def _key(workout_id: object) -> str:
    # Invalid ids still count (the pipeline quarantines them): a page of them repeated
    # forever is as endless as any other.
    return workout_id if isinstance(workout_id, str) else f"\0{workout_id!r:.80}"
