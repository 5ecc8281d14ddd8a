"""`hitl keys ...`: issue, list and revoke the serving API's keys (directly in its database).

`create` prints the key alone on stdout (`KEY=$(hitl keys create ...)` works) and everything else on
stderr; the key is never shown again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hitl.context import open_store, settings_from
from serving import keys
from serving.store import Store

app = typer.Typer(
    help="API keys for the serving API (roles: service, merchandiser, ...).", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)
ROLES = ", ".join(r.value for r in keys.Role)


@contextmanager
def _store(ctx: typer.Context) -> Iterator[Store]:
    store = open_store(settings_from(ctx).database_url, create=True)
    try:
        yield store
    finally:
        store.close()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


@app.command()
def create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option("--role", "-r", help=f"one of: {ROLES}")],
    name: Annotated[str, typer.Option("--name", "-n", help="who or what uses the key")],
) -> None:
    """Issue a key and print it once."""
    try:
        checked = keys.parse_role(role)
    except keys.UnknownRoleError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with _store(ctx) as store:
        try:
            key_id, plaintext = keys.create_key(store, name, checked)
        except ValueError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    stored_name = keys.clean_key_name(name)  # as `hitl keys list` will show it: personal data masked
    err_console.print(
        f"created key {key_id} ({checked.value}, {stored_name!r}); it is shown once, store it now:"
    )
    # Plain print: no wrapping or markup may alter the key.
    typer.echo(plaintext)


@app.command("list")
def list_(
    ctx: typer.Context,
    include_revoked: Annotated[bool, typer.Option("--all", "-a", help="include revoked keys")] = False,
) -> None:
    """The keys (id, name, role, prefix, dates); never a key itself."""
    with _store(ctx) as store:
        infos = keys.list_keys(store, include_revoked=include_revoked)
    if not infos:
        err_console.print("no keys yet: `hitl keys create --role admin --name <you>`")
        return
    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    for info in infos:
        table.add_row(
            str(info.id),
            info.name,
            info.role.value,
            info.prefix + "...",
            _when(info.created_at),
            _when(info.last_used_at),
            _when(info.revoked_at),
        )
    console.print(table)


@app.command()
def revoke(
    ctx: typer.Context,
    key_id: Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="the key's id (see `list`)")],
) -> None:
    """Revoke a key: it gets 401 within serving.key_cache_ttl_s (5 s) on running servers."""
    with _store(ctx) as store:
        before = keys.get_key(store, key_id)
        info = keys.revoke_key(store, key_id)
    if info is None:
        err_console.print(f"[red]error:[/red] no key {key_id}")
        raise typer.Exit(1)
    if before is not None and not before.active:  # idempotent, but say so: nothing changed
        when = _when(info.revoked_at)
        err_console.print(f"key {info.id} ({info.role.value}, {info.name!r}) was already revoked at {when}")
        return
    err_console.print(f"revoked key {info.id} ({info.role.value}, {info.name!r})")
