from __future__ import annotations

import pytest

from hitl.settings import LabelStudioSettings
from labeling.exceptions import LabelStudioUnavailableError, ReviewerDirectoryUnavailable
from labeling.reviewers import ReviewerTiers, high_stakes, tiers_from


class Directory:
    """Label Studio's users as the tiers see them; counts the look-ups, can be made to fail."""

    def __init__(self, users: dict[int, str]) -> None:
        self.users = users
        self.calls = 0
        self.down = False

    def __call__(self) -> dict[int, str]:
        self.calls += 1
        if self.down:
            raise LabelStudioUnavailableError("Label Studio at http://127.0.0.1:1 did not answer list users")
        return dict(self.users)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_high_stakes_reasons() -> None:
    assert high_stakes(["below_threshold", "high_value"])
    assert high_stakes(["always_review_brand"])
    assert high_stakes(["always_review_category"])
    assert not high_stakes(["below_threshold", "audit", "spot_check"])


def test_seniors_by_email_case_insensitive_and_unknown_users_are_not_senior() -> None:
    clock = Clock()
    directory = Directory({1: "Head@Shop.example", 2: "junior@shop.example"})
    tiers = ReviewerTiers([" head@shop.example "], directory, clock=clock)
    assert tiers.is_senior(1)
    assert not tiers.is_senior(2)
    assert not tiers.is_senior(None)
    clock.now += 5
    assert not tiers.is_senior(99)  # read again for it, and not there
    assert directory.calls == 2


def test_a_new_user_is_looked_up_at_most_every_min_refresh_and_all_after_refresh_s() -> None:
    clock = Clock()
    directory = Directory({1: "head@shop.example"})
    tiers = ReviewerTiers(["head@shop.example", "new@shop.example"], directory, clock=clock)
    assert not tiers.is_senior(7)
    directory.users[7] = "new@shop.example"
    clock.now += 1
    # Within min_refresh_s no second look-up, and a directory read a moment ago may predate the user:
    # not guessed (before: "junior", and a new senior's label was stored as a proposal for good).
    with pytest.raises(ReviewerDirectoryUnavailable, match=r"was read 1.0 s ago \(at most every 5 s\)"):
        tiers.is_senior(7)
    assert directory.calls == 1
    clock.now += 5
    assert tiers.is_senior(7)
    assert directory.calls == 2
    # A known user's email change applies once the directory is older than refresh_s.
    directory.users[1] = "moved@shop.example"
    clock.now += 30
    assert tiers.is_senior(1)
    assert directory.calls == 2
    clock.now += 31
    assert not tiers.is_senior(1)
    assert directory.calls == 3


def test_when_label_studio_cannot_be_read_known_users_keep_their_tier_and_unknown_ones_are_not_guessed() -> (
    None
):
    clock = Clock()
    directory = Directory({1: "head@shop.example", 3: "junior@shop.example"})
    tiers = ReviewerTiers(["head@shop.example", "new@shop.example"], directory, clock=clock)
    assert tiers.is_senior(1)
    directory.down = True
    directory.users[2] = "new@shop.example"
    clock.now += 100
    assert tiers.is_senior(1)
    assert not tiers.is_senior(3)
    assert not tiers.is_senior(None)
    # Guessing "junior" here stored a senior's label as a proposal, for good.
    with pytest.raises(ReviewerDirectoryUnavailable, match="user 2 is not among the 2 users"):
        tiers.is_senior(2)
    clock.now += 1  # within min_refresh_s: no new look-up, still unknown
    with pytest.raises(ReviewerDirectoryUnavailable):
        tiers.is_senior(2)
    directory.down = False
    clock.now += 5
    assert tiers.is_senior(2)
    clock.now += 5
    assert not tiers.is_senior(99)  # read again for it, fine, and not there: not a senior


def test_a_directory_never_read_tells_nobody_apart() -> None:
    directory = Directory({1: "head@shop.example"})
    directory.down = True
    tiers = ReviewerTiers(["head@shop.example"], directory, clock=Clock())
    with pytest.raises(ReviewerDirectoryUnavailable, match="0 users"):
        tiers.is_senior(1)


def test_settings_name_seniors_by_email() -> None:
    assert tiers_from(LabelStudioSettings(senior_reviewers=[])) is None
    tiers = tiers_from(LabelStudioSettings(senior_reviewers=["Head@Shop.example", "head@shop.example"]))
    assert tiers is not None
    assert tiers.seniors == frozenset({"head@shop.example"})
    with pytest.raises(ValueError, match="1 senior reviewer"):
        LabelStudioSettings(senior_reviewers=["not an email"])
