"""Schema migrations (issue #12.9): every table registered in one place, and upgrades that keep data."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    create_engine,
    inspect,
    text,
)
from typer.testing import CliRunner

from hitl.settings import Settings
from serving import db
from serving.store import Store
from tests.unit.serving.db_checks import check_initial_to_head_keeps_every_row, fill_every_table


def test_an_initial_database_with_data_upgrades_to_head_and_keeps_every_row(tmp_path: Path) -> None:
    check_initial_to_head_keeps_every_row(f"sqlite:///{tmp_path / 'old.db'}")


def test_the_migrations_build_exactly_the_models_schema(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    with engine.begin() as connection:
        command.upgrade(db._config(connection), "head")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), db.metadata()) == []
        triggers = connection.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).all()
    assert sorted(triggers) == ["audit_events_no_delete", "audit_events_no_update"]


def test_a_database_made_before_migrations_is_adopted_and_keeps_its_rows(tmp_path: Path) -> None:
    # The releases before migrations built tables with create_all, and only those of imported modules.
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(db._config(connection), db.INITIAL_REVISION)
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("DROP TABLE outbox"))  # its module was never imported there
        before = fill_every_table(connection)
    store = Store(url)
    store.create_all()
    assert db.current_revision(store.engine) == db.head_revision()
    tables = set(inspect(store.engine).get_table_names())
    assert {"outbox", "predictions"} <= tables
    with store.engine.connect() as connection:
        assert {t: connection.scalar(text(f'SELECT COUNT(*) FROM "{t}"')) for t in before} == before
    store.close()


def test_every_table_is_registered_in_one_place() -> None:
    names = set(db.metadata().tables)
    assert {"predictions", "outbox", "api_keys", "dashboard_sessions", "retrain_runs"} <= names


def test_the_cli_upgrades_and_reports_the_revision(tmp_path: Path) -> None:
    from hitl import cli_db

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    settings = Settings(state_dir=tmp_path)
    result = CliRunner().invoke(cli_db.app, ["upgrade", "--database-url", url], obj=settings)
    assert result.exit_code == 0, result.output
    assert f"revision {db.head_revision()} (was unversioned)" in result.output
    assert db.current_revision(create_engine(url)) == db.head_revision()
    nowhere = f"sqlite:///{tmp_path}"  # a directory, not a database file
    bad = CliRunner().invoke(cli_db.app, ["upgrade", "--database-url", nowhere], obj=settings)
    assert bad.exit_code == 1
    assert "could not upgrade the database" in bad.output


def test_personal_data_stored_before_masking_is_masked_by_the_upgrade(tmp_path: Path) -> None:
    # Issue #12.3: rows written by releases that stored raw text.
    url = f"sqlite:///{tmp_path / 'raw.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(db._config(connection), "0002")
        connection.execute(
            text(
                "INSERT INTO items (id, title, description, first_seen_at, updated_at) VALUES "
                "('a', 'Mug, mail jane@example.com', 'call +1 (415) 555-2671', '2026-01-01', '2026-01-01'),"
                "('b', 'Plain kettle', '', '2026-01-01', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO outbox (item_id, model_version, priority, payload, status, attempts, "
                "next_attempt_at, created_at) VALUES ('a', 'v1', 0.5, "
                '\'{"title": "Mug, mail jane@example.com", "price": 3.0}\', \'pending\', 0, '
                "'2026-01-01', '2026-01-01')"
            )
        )
    Store(url).create_all()
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, title, description FROM items ORDER BY id")).all()
        payload = connection.scalar(text("SELECT payload FROM outbox"))
    assert [tuple(r) for r in rows] == [("a", "Mug, mail [EMAIL]", "call [PHONE]"), ("b", "Plain kettle", "")]
    assert "jane@example.com" not in payload
    assert "[EMAIL]" in payload


def test_key_names_and_retrain_reasons_stored_before_masking_are_masked_by_the_upgrade(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'names.db'}"
    engine = create_engine(url)
    name = "jane.doe@example.com"
    with engine.begin() as connection:
        command.upgrade(db._config(connection), "0005")
        for statement in (
            "INSERT INTO api_keys (id, name, role, display_prefix, key_hash, created_at) VALUES "
            f"(1, '{name}', 'service', 'hitl_ab', 'h1', '2026-01-01'), "
            "(2, 'ingest', 'service', 'hitl_cd', 'h2', '2026-01-01')",
            "INSERT INTO items (id, title, description, first_seen_at, updated_at) VALUES "
            "('a', 'Mug', '', '2026-01-01', '2026-01-01')",
            "INSERT INTO model_versions (version, source, encoder_id, n_labels, details, first_loaded_at) "
            "VALUES ('m:v1', 't', 't', 1, '{}', '2026-01-01')",
            "INSERT INTO predictions (item_id, model_version, label, confidence, top_k, decision, reasons, "
            "priority, requested_by, created_at) VALUES "
            f"('a', 'm:v1', 'A', 0.9, '[]', 'escalated', '[]', 0.5, '{name}', '2026-01-01'), "
            "('a', 'm:v1', 'A', 0.9, '[]', 'escalated', '[]', 0.5, 'ingest', '2026-01-01')",
            "INSERT INTO retrain_runs (status, stage, reasons, created_at, promoted, metrics) VALUES "
            f"('promoted', 'done', '[\"api:{name}:nightly\", \"corrections:200\"]', '2026-01-01', 1, '{{}}')",
        ):
            connection.execute(text(statement))
    Store(url).create_all()
    with engine.connect() as connection:
        names = connection.execute(text("SELECT name FROM api_keys ORDER BY id")).scalars().all()
        actors = connection.execute(text("SELECT requested_by FROM predictions ORDER BY id")).scalars().all()
        reasons = connection.scalar(text("SELECT reasons FROM retrain_runs"))
    assert names == ["[EMAIL]", "ingest"]
    assert actors == ["[EMAIL]", "ingest"]
    assert name not in reasons
    assert "api:[EMAIL]:nightly" in reasons
    assert "corrections:200" in reasons
