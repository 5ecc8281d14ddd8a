"""`hitl db ...`: the serving database's schema (Alembic migrations in `serving.db`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hitl.context import database_error, missing_sqlite_file, open_store, settings_from
from serving import db

app = typer.Typer(help="The serving database's schema: upgrade it, keeping every row.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option(help="default: serving.database_url (SQLite under the state dir)")
    ] = None,
) -> None:
    """Bring the database to the newest schema revision (new, pre-migration and migrated databases)."""
    url = database_url or settings_from(ctx).database_url
    store = open_store(url)
    try:
        before = db.current_revision(store.engine)
        head = db.upgrade(store.engine)
    except SQLAlchemyError as exc:
        err_console.print(f"[red]could not upgrade the database:[/red] {database_error(exc)}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    console.print(f"database at revision {head} (was {before or 'unversioned'})")


@app.command("current")
def current(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(help="default: serving.database_url")] = None,
) -> None:
    """Print the database's schema revision and the newest one this release has."""
    url = database_url or settings_from(ctx).database_url
    try:
        missing = missing_sqlite_file(url)
    except ArgumentError:
        missing = None  # open_store says what is wrong with the URL
    if missing is not None:  # reading a revision must not create the database (and its folders)
        err_console.print(f"[red]no database at {missing}[/red] (`hitl db upgrade` creates it)")
        raise typer.Exit(1)
    store = open_store(url)
    try:
        revision = db.current_revision(store.engine)
    except SQLAlchemyError as exc:
        err_console.print(f"[red]could not read the database:[/red] {type(exc).__name__}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    head = db.head_revision()
    state = "up to date" if revision == head else "run `hitl db upgrade`"
    console.print(f"revision {revision or 'unversioned'}; newest {head} ({state})")
