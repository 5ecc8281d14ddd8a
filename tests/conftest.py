"""Fixtures shared by the whole suite. Keep heavy imports inside fixtures: most tests never need torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from learner.encoder import HFEncoder


@pytest.fixture(scope="session")
def minilm_encoder() -> HFEncoder:
    """The packaged all-MiniLM-L6-v2 on CPU, loaded once per session and strictly offline."""
    from learner.encoder import HFEncoder
    from learner.settings import PACKAGED_ENCODER

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        encoder = HFEncoder(PACKAGED_ENCODER, device="cpu", batch_size=32, max_length=128)
    return encoder
