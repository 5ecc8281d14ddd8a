"""Errors raised by the learner. Messages carry the numbers needed to act on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class LearnerError(Exception):
    """Base class for every learner error."""


@dataclass(frozen=True)
class RecordProblem:
    """One bad catalog record: where it is and what is wrong with it."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class CatalogError(LearnerError):
    """A catalog file has bad records; every problem is listed with its line number."""

    def __init__(self, path: str, problems: Sequence[RecordProblem], shown: int = 10) -> None:
        self.path = path
        self.problems = list(problems)
        listed = "; ".join(str(p) for p in self.problems[:shown])
        more = f" (+{len(self.problems) - shown} more)" if len(self.problems) > shown else ""
        super().__init__(f"{path}: {len(self.problems)} bad record(s): {listed}{more}")


class PoolExhausted(LearnerError):
    """More items were requested from the unlabeled pool than it holds."""

    def __init__(self, available: int, requested: int) -> None:
        self.available = available
        self.requested = requested
        super().__init__(f"pool has {available} item(s), {requested} requested")


class NotFittedError(LearnerError):
    """A model was used before `fit`."""


class BundleFormatError(LearnerError):
    """A model bundle on disk is missing pieces or was written by another format version."""


class EncoderLoadError(LearnerError):
    """The encoder could not be loaded from the configured name or path."""
