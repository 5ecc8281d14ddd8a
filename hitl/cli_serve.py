"""`hitl serve`: the prediction and escalation service under uvicorn; `hitl serve register`: MLflow."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any

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


# Our packages log at INFO beside uvicorn's own lines; uvicorn's access log is off, because it writes
# raw paths and query strings (item ids, reasons): `serving.access` logs route templates instead.
_LOGGED_PACKAGES = ("hitl", "serving", "labeling", "learner")


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with its access log replaced by ``serving.access``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    for name in _LOGGED_PACKAGES:
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="replica processes on the port (uvicorn workers); on one database they elect one retrain "
            "leader and share the outbox without pushing a task twice",
        ),
    ] = 1,
) -> None:
    """Serve the API with uvicorn (the model and store live in each worker process)."""
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
    try:
        settings.check_exposure()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"serving on http://{serving.host}:{serving.port} (model source: {serving.model_source}, "
        f"{workers} worker{'s' if workers > 1 else ''})"
    )
    if workers == 1:
        app = create_app(settings)
        uvicorn.run(
            app,
            host=serving.host,
            port=serving.port,
            log_config=log_config(),
            access_log=False,
            lifespan="on",
        )
        return
    # Worker processes build their own app from the configuration: what this command overrode travels
    # in the environment, which every worker reads.
    config = ctx.find_root().params.get("config")
    os.environ.update(
        {
            **({"HITL_CONFIG": str(Path(config).resolve())} if config else {}),
            "HITL_SERVING__MODEL_SOURCE": serving.model_source,
            "HITL_SERVING__HOST": serving.host,
            "HITL_SERVING__PORT": str(serving.port),
            **({"HITL_SERVING__BUNDLE_PATH": str(serving.bundle_path)} if serving.bundle_path else {}),
        }
    )
    uvicorn.run(
        "hitl.cli_up:serving_app",
        factory=True,
        host=serving.host,
        port=serving.port,
        workers=workers,
        log_config=log_config(),
        access_log=False,
        lifespan="on",
    )


@app.command("register")
def register(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="a model bundle folder", exists=True, file_okay=False)],
    promote: Annotated[bool, typer.Option(help="point the served alias (champion) at it")] = True,
) -> None:
    """Log a bundle to the MLflow registry as a new version (and make it the champion)."""
    from learner.bundle import ModelBundle
    from learner.exceptions import BundleFormatError
    from serving import registry

    settings = _settings(ctx)
    try:  # what the server would load, checked before it can become the champion
        ModelBundle.load(bundle, device="cpu")
    except (BundleFormatError, ValueError) as exc:
        console.print(f"[red]{bundle} is not a model bundle that loads:[/red] {exc}; nothing registered")
        raise typer.Exit(2) from None
    version = registry.log_bundle(settings, bundle, alias=settings.serving.model_alias if promote else None)
    typer.echo(registry.version_label(settings, version))
