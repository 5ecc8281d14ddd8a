"""`hitl labelstudio ...`: run the project's Label Studio, bootstrap its project, reconcile corrections."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from hitl.context import missing_sqlite_file, settings_from
from hitl.settings import Settings
from labeling.client import ML_BACKEND_STATES, LabelStudioClient
from labeling.config import Taxonomy
from labeling.exceptions import LabelingError
from labeling.project import bootstrap_project, webhook_url
from labeling.reviewers import senior_check, tiers_from
from labeling.server import LabelStudioServer
from labeling.sync import sync_project
from learner.pii import mask_credentials
from serving.routers.ml_backend import ml_backend_spec
from serving.store import Store

app = typer.Typer(help="The Label Studio where merchandisers correct predictions.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code)


def _server(settings: Settings) -> LabelStudioServer:
    return LabelStudioServer(settings.labelstudio, settings.state_dir)


def _spinner() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console)


def load_taxonomy(path: Path) -> Taxonomy:
    """A taxonomy file: JSON or YAML list of paths (strings or lists), else one `A > B` path per line."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise LabelingError(f"taxonomy file {what}: {path}")
    structured = path.suffix in (".json", ".yaml", ".yml")
    entries: Any
    try:
        text = path.read_text(encoding="utf-8")
        if structured:
            entries = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as exc:  # JSONDecodeError too
        # The parser's own words name the line and column; a taxonomy holds no secrets.
        raise LabelingError(f"{path}: not readable as {path.suffix.lstrip('.') or 'text'}: {exc}") from None
    if not structured:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    elif not isinstance(entries, list):
        raise LabelingError(f"{path}: expected a list of category paths")
    try:
        return Taxonomy.from_paths(entries)
    except ValueError as exc:
        raise LabelingError(f"{path}: {exc}") from None


@app.command()
def install(ctx: typer.Context) -> None:
    """Install Label Studio into its own venv (first time only)."""
    server = _server(settings_from(ctx))
    try:
        with _spinner() as progress:
            task = progress.add_task("checking", total=None)
            changed = server.install(lambda msg: progress.update(task, description=msg))
    except LabelingError as exc:
        raise _fail(exc) from None
    console.print(
        f"Label Studio {server.settings.version} {'installed' if changed else 'already'} in {server.venv}"
    )


@app.command()
def start(ctx: typer.Context) -> None:
    """Install if needed, start Label Studio on its configured host/port, and wait until healthy."""
    settings = settings_from(ctx)
    if settings.labelstudio.url:
        shown = mask_credentials(settings.labelstudio.base_url)
        console.print(f"Using the external Label Studio at {shown}: nothing to start")
        return
    server = _server(settings)
    started = time.monotonic()
    try:
        with _spinner() as progress:
            task = progress.add_task("checking", total=None)
            server.install(lambda msg: progress.update(task, description=msg))
            status = server.start(lambda msg: progress.update(task, description=msg))
    except LabelingError as exc:
        raise _fail(exc) from None
    console.print(
        f"Label Studio is up at {status.url} (PID {status.pid}, {time.monotonic() - started:.0f} s); "
        f"log: {status.log_file}"
    )


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the Label Studio started by `hitl labelstudio start` (only its recorded PID)."""
    server = _server(settings_from(ctx))
    pid = server.recorded_pid()
    if server.stop():
        console.print(f"stopped Label Studio (PID {pid})")
    else:
        console.print("Label Studio was not running")


@app.command()
def status(ctx: typer.Context) -> None:
    """Is Label Studio running and healthy, and is the project connected to our ML backend? Exit 1 when
    Label Studio is down."""
    settings = settings_from(ctx)
    if settings.labelstudio.url:
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            try:
                me = client.whoami()
            except LabelingError as exc:
                raise _fail(exc) from None
        console.print(
            f"external Label Studio at {mask_credentials(settings.labelstudio.base_url)}: "
            f"reachable as {me.get('email')}"
        )
        _print_ml_backend(settings)
        _print_tiers(settings)
        return
    current = _server(settings).status()
    if current.running and current.healthy:
        console.print(f"running at {current.url} (PID {current.pid}), healthy; data: {current.data_dir}")
        _print_ml_backend(settings)
        _print_tiers(settings)
        return
    state = "running but not healthy" if current.running else "not running"
    err_console.print(f"Label Studio is {state} ({current.url})")
    raise typer.Exit(1)


def _print_ml_backend(settings: Settings) -> None:
    """One line on the project's ML-backend connection (what "Start training" reaches)."""
    title = settings.labelstudio.project_title
    wanted = ml_backend_spec(settings.serving).url
    try:
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            project = client.find_project(title)
            if project is None:
                console.print(f"project {title!r}: not created yet (hitl labelstudio bootstrap)")
                return
            ours = client.ml_backends_at(int(project["id"]), wanted)
    except LabelingError as exc:
        err_console.print(f"ML backend: could not be read ({exc})")
        return
    if not ours:
        console.print(
            f"ML backend: not connected to project {project['id']} "
            "(start the serving API, then hitl labelstudio bootstrap)"
        )
        return
    state = str(ours[0].get("state"))
    console.print(
        f"ML backend {ours[0]['id']} -> {wanted}: {ML_BACKEND_STATES.get(state, state)} "
        f"(model version {ours[0].get('model_version') or 'none'})"
    )


def _print_tiers(settings: Settings) -> None:
    """One line on the reviewer tiers: who is senior, and whether Label Studio knows them."""
    seniors = settings.labelstudio.senior_reviewers
    if not seniors:
        console.print("senior review: off (labelstudio.senior_reviewers is empty)")
        return
    try:
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            known = {email.lower() for email in client.user_emails().values()}
    except LabelingError as exc:
        err_console.print(f"senior review: users could not be read ({exc})")
        return
    missing = [e for e in seniors if e not in known]
    line = f"senior review: {len(seniors)} senior reviewer(s) for high-stakes items"
    if missing:
        line += f"; {len(missing)} not a Label Studio user yet: {', '.join(missing)}"
    console.print(line)
    held = _held_for_senior(settings)
    if held:
        # Label All Tasks never serves a reviewer a task they annotated or skipped before: a senior in
        # that case opens these from the Data Manager.
        shown = ", ".join(str(t) for t in held[:20]) + (" ..." if len(held) > 20 else "")
        console.print(f"  {len(held)} task(s) wait for a senior reviewer: {shown}")


def _held_for_senior(settings: Settings) -> list[int]:
    if missing_sqlite_file(settings.database_url):  # nothing recorded yet; a status creates nothing
        return []
    store = Store(settings.database_url)
    try:
        project_id = store.project_by_title(settings.labelstudio.project_title)
        return [] if project_id is None else store.held_for_senior(project_id)
    except SQLAlchemyError as exc:  # a database the app has not set up: nothing held there
        err_console.print(f"senior holds could not be read: {type(exc).__name__}")
        return []
    finally:
        store.close()


@app.command()
def bootstrap(
    ctx: typer.Context,
    taxonomy: Annotated[
        Path, typer.Option("--taxonomy", "-t", help="JSON/YAML list or one `A > B` per line")
    ],
    model_version: Annotated[str | None, typer.Option(help="show this model version in the project")] = None,
    ml_backend: Annotated[
        bool,
        typer.Option(
            "--ml-backend/--no-ml-backend",
            help="connect the serving API as the project's ML backend (the API must be running)",
        ),
    ] = True,
) -> None:
    """Create (or update) the project, its webhook and its ML backend; safe to run again."""
    settings = settings_from(ctx)
    try:
        tax = load_taxonomy(taxonomy)
        store = Store(settings.database_url)
        store.create_all()
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            info = bootstrap_project(
                client,
                tax,
                title=settings.labelstudio.project_title,
                webhook_url=webhook_url(settings.serving.base_url),
                webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
                model_version=model_version,
                record_taxonomy=lambda pid: store.widen_taxonomy(
                    pid, settings.labelstudio.project_title, tax
                ),
            )
            store.save_project(info.project_id, settings.labelstudio.project_title, info.webhook_id, tax)
            store.close()
            verb = (
                "created" if info.project_created else "up to date" if not info.config_updated else "updated"
            )
            console.print(
                f"project {info.project_id} ({len(tax)} categories) {verb}; webhook {info.webhook_id} "
                f"{'created' if info.webhook_created else 'kept'} -> {webhook_url(settings.serving.base_url)}"
            )
            if not ml_backend:
                return
            spec = ml_backend_spec(settings.serving)
            try:
                ml_id, ml_created = client.ensure_ml_backend(info.project_id, spec)
            except LabelingError as exc:
                err_console.print(
                    f"ML backend not connected: {exc}\nThe project and its webhook are saved. Start the "
                    "serving API with a model (hitl serve), then run this again, or pass --no-ml-backend."
                )
                raise typer.Exit(1) from None
            console.print(f"ML backend {ml_id} {'connected' if ml_created else 'kept'} -> {spec.url}")
    except LabelingError as exc:
        raise _fail(exc) from None


@app.command()
def sync(ctx: typer.Context) -> None:
    """Pull annotations from Label Studio and store every correction a webhook did not deliver."""
    settings = settings_from(ctx)
    store = Store(settings.database_url)
    store.create_all()
    project_id = store.project_by_title(settings.labelstudio.project_title)
    taxonomy = store.taxonomy(project_id) if project_id is not None else None
    if project_id is None or taxonomy is None:
        store.close()
        raise _fail(LabelingError(f"project {settings.labelstudio.project_title!r} is not bootstrapped yet"))
    try:
        with _spinner() as progress, LabelStudioClient.from_settings(settings.labelstudio) as client:
            task = progress.add_task("reading annotations", total=None)
            report = sync_project(
                client,
                store,
                project_id,
                taxonomy,
                progress=lambda n: progress.update(task, description=f"{n} annotations read"),
                is_senior=senior_check(tiers_from(settings.labelstudio)),
            )
        store.record_sync(project_id, report.recorded, report.deleted)
    except LabelingError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    console.print(
        f"project {project_id}: {report.annotations_seen} annotations read, {report.recorded} recorded "
        f"({report.rejected} rejected), {report.deleted} deletions recorded"
        + (
            f"; {report.deferred} on needs-senior tasks left for the next sync (Label Studio's users "
            "could not be read)"
            if report.deferred
            else ""
        )
    )
