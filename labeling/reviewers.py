"""Reviewer tiers: whose annotation is the label of a high-stakes item, and whose is only a proposal.

A junior analyst should not approve what a department head approves. Items escalated for high value, an
always-review category or an always-review brand carry ``needs_senior`` in their task's meta (set by
`labeling.push`); on such a task the annotation of a reviewer outside `ReviewerTiers.seniors` is stored as
a proposal (`labeling.webhooks.correction_from`) and the task is held open for a senior
(`LabelStudioClient.hold_task`).

Label Studio's webhooks name the annotator by user id only, so the tiers keep Label Studio's id -> email
directory, refreshed when it is older than ``refresh_s`` or when an unknown id shows up (at most every
``min_refresh_s``, so a burst of annotations by a new user costs one lookup). When the directory cannot be
read (or was read a moment ago, perhaps before a new user existed), a known user keeps the tier last read,
and whether an unknown one is senior is not guessed
(`ReviewerDirectoryUnavailable`): the webhook answers 503 and stores nothing, and the periodic sync records
the annotation once the directory answers. Guessing "junior" stored a senior's label as a proposal, and
the sync never looks again at a state it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from labeling.client import LabelStudioClient
from labeling.exceptions import LabelingError, ReviewerDirectoryUnavailable
from labeling.settings import LabelStudioSettings
from learner.pii import describe_error

logger = logging.getLogger(__name__)

# The routing reasons (`serving.routing.Reason` values) that make an item high-stakes.
HIGH_STAKES_REASONS = frozenset({"high_value", "always_review_category", "always_review_brand"})
NEEDS_SENIOR = "needs_senior"  # the task meta key


def high_stakes(reasons: Sequence[str]) -> bool:
    return not HIGH_STAKES_REASONS.isdisjoint(reasons)


class ReviewerTiers:
    """`is_senior(user_id)` for the Label Studio users whose email is in `seniors` (case-insensitive)."""

    def __init__(
        self,
        seniors: Iterable[str],
        directory: Callable[[], Mapping[int, str]],
        *,
        refresh_s: float = 60.0,
        min_refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seniors = frozenset(e.strip().lower() for e in seniors)
        self._directory = directory
        self._refresh_s = refresh_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._emails: dict[int, str] = {}
        self._loaded_at: float | None = None
        self._last_read_failed = False
        self._lock = threading.Lock()

    def _load(self, now: float) -> None:
        try:
            emails = {int(uid): email.strip().lower() for uid, email in self._directory().items()}
        except LabelingError as exc:  # keep what we knew; an unknown reviewer is not guessed meanwhile
            self._last_read_failed = True
            logger.warning(
                "reviewer tiers: Label Studio's user directory could not be read: %s", describe_error(exc)
            )
        else:
            self._emails = emails
            self._last_read_failed = False
        self._loaded_at = now

    def email_of(self, user_id: int) -> str | None:
        """The user's email; None for a user id that a read made for this look-up does not hold. Raises
        `ReviewerDirectoryUnavailable` for an id it has not seen when it cannot read the directory now:
        the read fails, or the last one is younger than ``min_refresh_s`` and may predate the user."""
        with self._lock:
            now = self._clock()
            age = None if self._loaded_at is None else now - self._loaded_at
            stale = age is None or age >= self._refresh_s
            unknown = user_id not in self._emails
            read_now = stale or (unknown and (age is None or age >= self._min_refresh_s))
            if read_now:
                self._load(now)
            if user_id not in self._emails:
                if self._last_read_failed:
                    raise ReviewerDirectoryUnavailable(user_id, len(self._emails))
                if not read_now:
                    why = f"was read {age or 0.0:.1f} s ago (at most every {self._min_refresh_s:g} s)"
                    raise ReviewerDirectoryUnavailable(user_id, len(self._emails), why)
            return self._emails.get(user_id)

    def is_senior(self, user_id: int | None) -> bool:
        """True for a senior reviewer; False for anyone else, a user id Label Studio does not know, or no
        user at all. Raises `ReviewerDirectoryUnavailable` when it cannot tell (see the module)."""
        if user_id is None:
            return False
        email = self.email_of(user_id)
        return email is not None and email in self.seniors


def tiers_from(settings: LabelStudioSettings) -> ReviewerTiers | None:
    """The tiers `settings` ask for, reading Label Studio's users through the API; None = no tiers."""
    if not settings.senior_reviewers:
        return None

    def directory() -> dict[int, str]:
        with LabelStudioClient.from_settings(settings) as client:
            return client.user_emails()

    return ReviewerTiers(settings.senior_reviewers, directory, refresh_s=settings.reviewer_refresh_s)


def senior_check(tiers: ReviewerTiers | None) -> Callable[[int | None], bool] | None:
    return None if tiers is None else tiers.is_senior
