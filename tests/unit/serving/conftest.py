"""A real small model for the serving tests (trained once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from learner.encoder import HFEncoder


@pytest.fixture(scope="session")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for every serving test of the session (unit and integration)."""
    path = tmp_path_factory.getbasetemp() / "serving-embeddings"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def bundle_dir(
    minilm_encoder: HFEncoder, embedding_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from experiments.fixtures import train_small_bundle

    return train_small_bundle(minilm_encoder, embedding_dir, tmp_path_factory.mktemp("bundle"))
