"""The settings of one `hitl` invocation, read once by the root callback (`hitl.cli`) and shared by every
command group through typer's context. Its own module, so that the command groups need not import the
module that registers them."""

from __future__ import annotations

import typer

from hitl.settings import Settings


def settings_from(ctx: typer.Context) -> Settings:
    """The settings the root callback read once for this invocation."""
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):  # pragma: no cover - the root callback always sets it
        raise RuntimeError("settings were not loaded")
    return settings
