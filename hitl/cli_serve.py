"""`hitl serve`: the prediction and escalation service under uvicorn; `hitl serve register`: MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hitl.settings import Settings

app = typer.Typer(
    name="serve",
    help="Run the serving API (predict, route, store, audit) and manage the served model.",
    no_args_is_help=False,
    invoke_without_command=True,
)
console = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    from hitl.context import settings_from

    return settings_from(ctx)


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="serve this local model bundle instead of the registry's champion"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default: serving.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serving.port)")] = None,
) -> None:
    """Serve the API with uvicorn (one process; the model and store live in it)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from serving.app import create_app

    settings = _settings(ctx)
    serving = settings.serving.model_copy(
        update={
            **({"bundle_path": bundle.resolve(), "model_source": "bundle"} if bundle is not None else {}),
            **({"host": host} if host is not None else {}),
            **({"port": port} if port is not None else {}),
        }
    )
    settings = settings.model_copy(update={"serving": serving})
    console.print(f"serving on http://{serving.host}:{serving.port} (model source: {serving.model_source})")
    uvicorn.run(create_app(settings), host=serving.host, port=serving.port, log_level="info", lifespan="on")


@app.command("register")
def register(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="a model bundle folder", exists=True, file_okay=False)],
    promote: Annotated[bool, typer.Option(help="point the served alias (champion) at it")] = True,
) -> None:
    """Log a bundle to the MLflow registry as a new version (and make it the champion)."""
    from serving import registry

    settings = _settings(ctx)
    version = registry.log_bundle(settings, bundle, alias=settings.serving.model_alias if promote else None)
    typer.echo(registry.version_label(settings, version))
