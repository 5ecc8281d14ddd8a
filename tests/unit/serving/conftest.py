"""The serving tests' `store`: SQLite, and PostgreSQL too for the tests marked `every_database`.

A store test marked `every_database` runs once per database (ids `[sqlite]`, `[postgresql]`), so the
store's behaviour is checked on both without the test being written twice. The PostgreSQL run is marked
`integration`: it starts the suite's throwaway server (tests/postgres.py) and is not in `make test-fast`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.store import Store

DATABASES = ("sqlite", pytest.param("postgresql", marks=pytest.mark.integration))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("every_database") and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", DATABASES, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: SQLite in the test's tmp dir unless parametrized to PostgreSQL."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'hitl.db'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    db = Store(database)
    db.create_all()
    yield db
    db.close()
