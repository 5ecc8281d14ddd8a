"""Fixtures shared by the whole suite. Keep heavy imports inside fixtures: most tests never need torch.

A throwaway PostgreSQL (`postgres_server`, `postgres_url`) comes from tests/postgres.py and starts only
when a test asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures for every module)

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


@pytest.fixture(scope="session")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for every test of the session that embeds the synthetic catalog."""
    path = tmp_path_factory.getbasetemp() / "serving-embeddings"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def small_bundle_dir(
    minilm_encoder: HFEncoder, embedding_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`learner.synthetic_bundle.train_synthetic_bundle`, trained once for the session."""
    from learner.synthetic_bundle import train_synthetic_bundle

    return train_synthetic_bundle(minilm_encoder, embedding_dir, tmp_path_factory.mktemp("small-bundle"))
