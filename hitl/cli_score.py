"""`hitl score`: score a whole catalog with the champion, through the same routing, store and outbox as
`POST /v1/predict`; Parquet parts under --out, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hitl.context import open_store, settings_from
from hitl.settings import Settings
from learner.pii import describe_error

if TYPE_CHECKING:
    from serving.model import ModelHolder

ENGINES = ("local", "ray")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # messages whole, for people and scripts


def score(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Option(help="JSONL/CSV catalog to score", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="folder for the Parquet parts (re-run to resume)")],
    part_size: Annotated[int, typer.Option(min=1, max=100_000, help="items per part")] = 2048,
    engine: Annotated[str, typer.Option(help="local (this process) | ray (Ray Data actors)")] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="an existing Ray cluster (e.g. auto, ray://head:10001); default: a local one"),
    ] = None,
    ray_actors: Annotated[int, typer.Option(min=1, max=1024, help="Ray actors, each holding the model")] = 2,
) -> None:
    """Score every item of a catalog with the champion: decisions in the store and in Parquet. Items
    need no category; the file is read twice (checked, then scored part by part), never held whole."""
    from learner.exceptions import LearnerError
    from serving.model import ModelHolder, ModelLoadError
    from serving.scoring import RayScorer, ScoringError, catalog_items, catalog_outline, score_catalog

    settings = settings_from(ctx)
    if engine not in ENGINES:
        err_console.print(f"[red]unknown engine {engine!r}[/red]; one of: {', '.join(ENGINES)}")
        raise typer.Exit(2)
    try:
        with console.status(f"checking {catalog.name}"):
            outline = catalog_outline(catalog, part_size)
    except (LearnerError, OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read {catalog}:[/red] {exc}")
        raise typer.Exit(2) from exc
    if outline.count == 0:
        err_console.print(f"[red]{catalog} holds no items to score[/red]")
        raise typer.Exit(2)
    holder = ModelHolder(settings)
    try:
        resumed = _resumed_model(settings, holder, out)
        if resumed is None:
            holder.refresh()
        model = holder.require()
    except (ModelLoadError, RuntimeError, OSError) as exc:  # OSError: a bundle path that holds no bundle
        err_console.print(f"[red]no model to score with:[/red] {exc}")
        raise typer.Exit(1) from exc
    store = open_store(settings.database_url, create=True)
    try:
        scorer = (
            RayScorer(model, settings, address=ray_address, concurrency=ray_actors)
            if engine == "ray"
            else None
        )
    except (OSError, RuntimeError, ValueError) as exc:  # no cluster at --ray-address (ConnectionError), ...
        store.close()
        err_console.print(f"[red]cannot start the Ray engine:[/red] {describe_error(exc)}")
        raise typer.Exit(2) from None
    try:
        with Progress(
            TextColumn(f"scoring {catalog.name} with {model.version} ({engine})"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("score", total=outline.count)
            report = score_catalog(
                model, store, catalog_items(catalog), settings, out, outline=outline,
                part_size=part_size, scorer=scorer, on_part=lambda n: progress.advance(task, n),
            )  # fmt: skip
    except (ScoringError, LearnerError, OSError) as exc:  # the file changed, or went, between readings
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    finally:
        if scorer is not None:
            scorer.close()
        store.close()
        holder.close()
    console.print(
        f"{report.items} items scored in {report.parts - report.skipped_parts} parts "
        f"({report.skipped_parts} done before), {report.escalated} escalated; Parquet in {out}"
    )


def _resumed_model(settings: Settings, holder: ModelHolder, out: Path) -> str | None:
    """A run resumed from the registry goes on with the version it started with, though the loop may
    have promoted others since (every 25 corrections): its parts mean something only for that model.
    Loaded into `holder`; returns its version, or None for a fresh run (or a local bundle)."""
    from learner.pii import describe_error
    from serving import registry
    from serving.model import ModelLoadError
    from serving.scoring import started_with

    version = started_with(out)
    prefix = f"{settings.mlflow.registered_model}:v"
    if settings.serving.model_source != "registry" or version is None or not version.startswith(prefix):
        return None
    try:
        folder = registry.download(settings, version.removeprefix(prefix))
    except Exception as exc:  # deleted from the registry, or MLflow down
        raise ModelLoadError(
            f"the run in {out} started with {version}, which the registry cannot give back "
            f"({describe_error(exc)}); score into a new --out folder"
        ) from exc
    holder.swap(holder.build(folder, version, f"registry:{version}"))
    console.print(f"resuming with {version}, the version this run started with")
    return version
