"""What a served model is to the code that asks it for categories: items in, one guess per item out.

The Label Studio ML backend (`serving.routers.ml_backend`) and the model holder (`serving.service`) meet
here, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from learner.data import has_visible_text


@dataclass(frozen=True)
class ItemText:
    """What the model sees of one Label Studio task."""

    title: str
    description: str = ""
    brand: str = ""
    price: float | None = None

    @property
    def has_title(self) -> bool:
        """A title with a visible character: without one there is nothing to predict from."""
        return has_visible_text(self.title)


@dataclass(frozen=True)
class LabelGuess:
    """A model's category for one item, with its probability."""

    label: str  # " > "-joined category path
    confidence: float  # the model's probability of `label`


class Predictor(Protocol):
    """A served model, as the ML backend asks it (`serving.service` adapts the loaded model to it)."""

    @property
    def model_version(self) -> str: ...

    def predict_items(self, items: Sequence[ItemText]) -> list[LabelGuess]:
        """One prediction per item, in order. Every item has a usable title (`has_title`)."""
        ...


class PredictorHolder(Protocol):
    """`app.state.model_holder`: the model being served, or None before one is loaded."""

    def current(self) -> Predictor | None: ...
