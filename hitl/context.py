"""The settings of one `hitl` invocation, read once by the root callback (`hitl.cli`) and shared by every
command group through typer's context. Its own module, so that the command groups need not import the
module that registers them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

from hitl.settings import Settings

if TYPE_CHECKING:
    from serving.store import Store


def settings_from(ctx: typer.Context) -> Settings:
    """The settings the root callback read once for this invocation."""
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):  # pragma: no cover - the root callback always sets it
        raise RuntimeError("settings were not loaded")
    return settings


def missing_sqlite_file(database_url: str) -> str | None:
    """The file a SQLite URL names when it does not exist (a command that only reads must not create
    it, as opening the store would), else None. Raises sqlalchemy's ArgumentError for a malformed URL."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not Path(database).is_file()
    ):
        return database
    return None


def database_error(exc: Exception) -> str:
    """A database error in one line: its type and the driver's first line (no URL, no statement)."""
    return f"{type(exc).__name__}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}"


def open_store(url: str, *, create: bool = False) -> Store:
    """The serving store at `url` (with ``create``: its tables created if missing), or exit 2 with a
    reason when the URL is malformed, names a database driver that is not installed, or the database
    cannot be reached. The URL is never printed: it can hold a password."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from serving.store import Store

    err = Console(stderr=True)
    try:
        store = Store(url)
    except ArgumentError as exc:
        err.print(f"[red]serving.database_url is not a usable database URL:[/red] {type(exc).__name__}")
        raise typer.Exit(2) from None
    except ImportError as exc:
        err.print(f"[red]the driver serving.database_url names is not installed:[/red] {exc.name}")
        raise typer.Exit(2) from None
    if create:
        try:
            store.create_all()
        except SQLAlchemyError as exc:
            store.close()
            err.print(f"[red]could not open the database:[/red] {database_error(exc)}")
            raise typer.Exit(1) from None
    return store
