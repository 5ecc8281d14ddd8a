"""The `hitl` command line. Each command group lives in its own module and is registered here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from hitl.settings import ConfigFileError, load_settings

app = typer.Typer(
    name="hitl",
    help="Active-learning annotation platform: calibrated product categories with humans in the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config (default: $HITL_CONFIG or configs/default.yaml)"),
    ] = None,
) -> None:
    try:
        ctx.obj = load_settings(config)
    except (ConfigFileError, ValidationError) as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _register() -> None:
    # Imported here, not at module top, so `hitl --help` stays fast and groups stay independent.
    from hitl import cli_db, cli_keys, cli_labelstudio, cli_learner, cli_serve

    app.add_typer(cli_learner.catalog_app, name="catalog")
    app.add_typer(cli_learner.learner_app, name="learner")
    app.add_typer(cli_labelstudio.app, name="labelstudio")
    app.add_typer(cli_serve.app, name="serve")
    app.add_typer(cli_keys.app, name="keys")
    app.add_typer(cli_db.app, name="db")
    from hitl import cli_demo, cli_models, cli_report, cli_score, cli_up

    app.command("up")(cli_up.up)
    app.command("down")(cli_up.down)
    app.add_typer(cli_demo.app, name="demo")
    app.command("retrain")(cli_models.retrain)
    app.command("retrain-status")(cli_models.retrain_status)
    app.add_typer(cli_models.models_app, name="models")
    app.command("report")(cli_report.report)
    app.command("score")(cli_score.score)
    from hitl import cli_experiments

    cli_experiments.register(app)


def main() -> None:
    # Before torch loads: its OpenMP threads otherwise spin while waiting for work, and on a shared
    # CPU (CI, a laptop serving and training at once) that cut encoder throughput 4-5x in
    # experiments/bench_serving. An explicit OMP_WAIT_POLICY in the environment still wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _register()
    app()
