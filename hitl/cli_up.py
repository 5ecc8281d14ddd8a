"""`hitl up` / `hitl down`: the whole loop on loopback, from a clean clone.

`up` starts (or reuses) Label Studio, a lean MLflow server and the serving API, then bootstraps a demo:
seed labels from the catalog -> first model (registered as champion) -> Label Studio project + webhook ->
API keys -> a background stream of the rest of the catalog through `/v1/predict` at a steady rate
(`hitl demo stream`), so escalations keep arriving in Label Studio.
Every step is skipped when already done (state under ``<state_dir>/up``), so re-running resumes.
`down` stops only the processes `up` started (their PIDs are recorded under ``<state_dir>/up``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from hitl.cli_demo import STREAM_PROGRESS
from hitl.settings import Settings, load_settings
from hitl.up_state import (
    KEYS_FILE,
    StackBusyError,
    mlflow_url,
    read_json,
    read_state,
    save_state,
    split_demo,
    stack_lock,
    stack_settings,
    up_dir_of,
    write_json,
)
from learner.files import replaced_atomically
from learner.pii import describe_error, mask_credentials

console = Console()
err_console = Console(stderr=True)
KEY_ROLES = ("service", "ml_engineer", "product_owner", "merchandiser")
STREAM_MARKER = "demo stream"  # in the stream process's command line
# Offline (nothing is downloaded at run time), and a clean terminal: no weight-loading or artifact
# progress bars, no run links printed by MLflow (the summary prints the MLflow UI once). Any of these
# already set in the environment wins.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # e.g. the registry's "waiting for model version creation"
}


def _settings(ctx: typer.Context) -> Settings:
    from hitl.context import settings_from

    return settings_from(ctx)


def serving_app() -> Any:
    """`uvicorn --factory hitl.cli_up:serving_app`: the app with settings from the config and env."""
    from serving.app import create_app

    return create_app(load_settings())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _started_mark(pid: int) -> str | None:
    """Which process `pid` is: this boot's id and the process's start time (clock ticks since boot),
    which a later process given the same PID cannot share; None where /proc does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        # The command name (field 2) may hold spaces and parentheses: the fields after its ")" count.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def _recorded(pid_file: Path, marker: str) -> int | None:
    """The PID in `pid_file` when it is still the process `up` started: alive, its command line holding
    `marker`, and (where /proc tells) the same start mark, so a stale file after a crash or reboot never
    names an unrelated process that was given the same PID."""
    try:
        pid_text, _, mark = pid_file.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if not _alive(pid) or marker not in _cmdline(pid):
        return None
    if mark and _started_mark(pid) not in (None, mark):
        return None
    return pid


def _record_pid(pid_file: Path, pid: int) -> None:
    mark = _started_mark(pid)
    with replaced_atomically(pid_file) as tmp:
        tmp.write_text(f"{pid} {mark}\n" if mark else f"{pid}\n")


def _healthy(url: str) -> bool:
    try:  # loopback: never through a configured HTTP proxy
        return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn(
    cmd: list[str], *, env: dict[str, str], log: Path, pid_file: Path, health: str | None, what: str
) -> int:
    """Start `cmd` in its own session; wait until `health` answers 200 (None: until it has run 2 s)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _record_pid(pid_file, proc.pid)
    started = time.monotonic()
    deadline = started + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{what} exited with code {proc.returncode}; last lines of {log}:\n{tail}")
        alive_for = time.monotonic() - started
        if (health is None and alive_for >= 2.0) or (health is not None and _healthy(health)):
            return proc.pid
        time.sleep(0.5)
    raise RuntimeError(f"{what} was not healthy after 180 s; see {log}")


# The API's shutdown waits up to 60 s for a running retrain to finish (`RetrainWorker.stop`): killed
# sooner, a run could be cut between moving the alias and recording it.
SERVING_STOP_GRACE_S = 75.0


@contextmanager
def _exclusive(up_dir: Path) -> Iterator[None]:
    """`stack_lock`, or a one-line error and exit 1 when another up/down holds it."""
    try:
        with stack_lock(up_dir):
            yield
    except StackBusyError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _stop_pid(pid_file: Path, marker: str, grace_s: float = 20.0) -> bool:
    pid = _recorded(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    try:
        group = os.getpgid(pid) == pid  # `_spawn` made it a session leader: its children go with it
        os.killpg(pid, signal.SIGTERM) if group else os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if group:  # whatever of the group is left (mlflow's uvicorn child outlives its parent)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        elif _alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended by itself meanwhile
        pass
    except PermissionError as exc:  # not ours to stop after all: said, and the other services go on
        err_console.print(f"[yellow]could not stop PID {pid} ({marker}): {exc.strerror}[/yellow]")
        return False
    pid_file.unlink(missing_ok=True)
    return True


def _start_stream(up_dir: Path, env: dict[str, str], items_per_s: float) -> bool:
    """Start `hitl demo stream` in the background unless it runs already or has streamed every item (it
    would exit at once, which `_spawn` reads as a failure); True when this call started it."""
    stream_pid_file = up_dir / "stream.pid"
    progress = read_json(up_dir / STREAM_PROGRESS)  # `hitl demo stream`'s record of how far it got
    streamed, total = int(progress.get("streamed", 0)), int(progress.get("total", 0))
    if _recorded(stream_pid_file, STREAM_MARKER):
        console.print("[green]✓[/green] the item stream is already running")
        return False
    if total and streamed >= total:
        console.print(f"[green]✓[/green] the item stream has finished ({streamed} items)")
        return False
    _spawn(
        [str(Path(sys.executable).parent / "hitl"), "demo", "stream"],
        env=env,
        log=up_dir / "stream.log",
        pid_file=stream_pid_file,
        health=None,
        what="the item stream",
    )
    console.print(
        f"[green]✓[/green] new items stream to /v1/predict at {items_per_s:g}/s "
        f"(log: {up_dir / 'stream.log'})"
    )
    return True


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def up(
    ctx: typer.Context,
    catalog: Annotated[
        Path | None, typer.Option(help="JSONL/CSV catalog (default: the synthetic one)")
    ] = None,
) -> None:
    """Start Label Studio, MLflow and the serving API on loopback and bootstrap the demo loop."""
    base = _settings(ctx)
    settings = stack_settings(base)
    up_dir = up_dir_of(settings)
    with _exclusive(up_dir):
        state = read_state(up_dir)
        started: dict[str, bool] = state.setdefault("started", {})
        env = dict(os.environ)
        env.update(
            {
                "HITL_STATE_DIR": str(settings.state_dir),
                "HITL_MLFLOW__TRACKING_URI": settings.tracking_uri,
                **{name: env.get(name, value) for name, value in QUIET_ENV.items()},
            }
        )
        config = ctx.find_root().params.get("config")
        if config:
            env["HITL_CONFIG"] = str(Path(config).resolve())
        os.environ.update({k: env[k] for k in QUIET_ENV})
        try:
            _up(settings, up_dir, state, started, env, catalog)
        except Exception as exc:
            save_state(up_dir, state)
            err_console.print(f"[red]hitl up failed:[/red] {describe_error(exc)}")
            err_console.print("fix the cause and run `make up` again: finished steps are skipped")
            raise typer.Exit(1) from exc
        save_state(up_dir, state)


def _up(
    settings: Settings,
    up_dir: Path,
    state: dict[str, Any],
    started: dict[str, bool],
    env: dict[str, str],
    catalog_path: Path | None,
) -> None:
    from labeling.server import LabelStudioServer

    # 1. Label Studio
    if settings.labelstudio.url:
        console.print(f"Label Studio: external, {mask_credentials(settings.labelstudio.base_url)}")
    else:
        server = LabelStudioServer(settings.labelstudio, settings.state_dir)
        was_running = server.status().running
        with console.status("Label Studio: installing / starting (first start ~1-2 min)") as status:
            server.install(lambda msg: status.update(f"Label Studio: {msg}"))
            server.start(lambda msg: status.update(f"Label Studio: {msg}"))
        started["labelstudio"] = started.get("labelstudio", False) or not was_running
        console.print(f"[green]✓[/green] Label Studio at {server.url}")

    # 2. MLflow server (lean: 1 worker, no job execution)
    mlflow_pid_file = up_dir / "mlflow.pid"
    if settings.mlflow.tracking_uri and not settings.tracking_uri.startswith(mlflow_url(settings)):
        console.print(f"MLflow: configured tracking URI {mask_credentials(settings.tracking_uri)}")
    elif _recorded(mlflow_pid_file, "mlflow") or _healthy(mlflow_url(settings) + "/health"):
        console.print(f"[green]✓[/green] MLflow already running at {mlflow_url(settings)}")
    else:
        artifacts = (settings.state_dir / "mlartifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{(settings.state_dir / 'mlflow.db').resolve()}",
            "--default-artifact-root",
            artifacts.as_uri(),
            "--host",
            settings.mlflow.server_host,
            "--port",
            str(settings.mlflow.server_port),
            "--workers",
            "1",
        ]
        with console.status("MLflow: starting a lean server (~10 s)"):
            _spawn(
                cmd,
                env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                log=up_dir / "mlflow.log",
                pid_file=mlflow_pid_file,
                health=mlflow_url(settings) + "/health",
                what="MLflow",
            )
        started["mlflow"] = True
        console.print(f"[green]✓[/green] MLflow at {mlflow_url(settings)}")

    # 3. Catalog, seed labels, first model
    from learner.data import load_catalog
    from serving import registry
    from serving.retrain import RetrainWorker, add_seed_labels, seed_count
    from serving.store import Store

    path = catalog_path or Path(state.get("catalog") or up_dir / "catalog.jsonl")
    if catalog_path is None and "catalog" not in state:
        size = settings.demo.catalog_size
        stale = path.is_file() and _count_lines(path) != size
        if not path.is_file() or stale:  # a demo catalog of another size, from an unfinished up: redo
            from learner.synthetic import generate_catalog, write_catalog

            write_catalog(generate_catalog(size, seed=settings.learner.seed), path)
    products = load_catalog(path).products
    labelled = [p for p in products if p.category]
    store = Store(settings.database_url)
    store.create_all()
    try:
        if seed_count(store) == 0:
            seed, _ = split_demo(products, settings.demo.seed_size)
            added = add_seed_labels(store, seed, level=settings.learner.label_level)
            # The stream is what the seed is not, so both are fixed once seeded (a re-run resumes them).
            state.update(catalog=str(path.resolve()), seed_size=settings.demo.seed_size)
            save_state(up_dir, state)
            console.print(f"[green]✓[/green] {added} seed labels from {path.name}")
        if registry.champion_version(settings) is None:
            worker = RetrainWorker(settings, store, None, auto=False)
            run_id = worker.trigger("seed").run_id
            with console.status("training the first model on the seed (encoder load + embeddings)"):
                worker.run_next()
            worker.stop()
            record = worker.get(run_id)
            if record is None or record.status != "promoted":
                raise RuntimeError(
                    f"the first model was not promoted: {record.error if record else 'no run'}"
                )
            console.print(f"[green]✓[/green] first model: version {record.version} (champion)")

        # 4. Serving API
        serving_pid_file = up_dir / "serving.pid"
        api = settings.serving.base_url
        if _recorded(serving_pid_file, "uvicorn") and _healthy(api + "/v1/health"):
            console.print(f"[green]✓[/green] serving API already running at {api}")
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "hitl.cli_up:serving_app",
                "--host",
                settings.serving.host,
                "--port",
                str(settings.serving.port),
                "--log-level",
                "warning",
            ]
            with console.status("serving API: starting (loads the champion)"):
                _spawn(
                    cmd,
                    env=env,
                    log=up_dir / "serving.log",
                    pid_file=serving_pid_file,
                    health=api + "/v1/health",
                    what="the serving API",
                )
            started["serving"] = True
            console.print(f"[green]✓[/green] serving API at {api}")

        # 5. Label Studio project + webhook
        from labeling.client import LabelStudioClient
        from labeling.config import Taxonomy
        from labeling.exceptions import LabelingError
        from labeling.project import bootstrap_project, webhook_url
        from learner.data import label_of
        from serving.routers.ml_backend import ml_backend_spec

        taxonomy = Taxonomy.from_paths(sorted({label_of(p, settings.learner.label_level) for p in labelled}))
        champion = registry.champion_version(settings)
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            info = bootstrap_project(
                client,
                taxonomy,
                title=settings.labelstudio.project_title,
                webhook_url=webhook_url(api),
                webhook_secret=settings.labelstudio.webhook_secret.get_secret_value(),
                model_version=registry.version_label(settings, champion) if champion else None,
                record_taxonomy=lambda pid: store.widen_taxonomy(
                    pid, settings.labelstudio.project_title, taxonomy
                ),
            )
            try:
                ml_id, _ = client.ensure_ml_backend(info.project_id, ml_backend_spec(settings.serving))
                ml_line = f"ML backend {ml_id} (Start training, Retrieve predictions)"
            except LabelingError as exc:
                # The loop works without it (tasks and webhooks do not need it): say so, go on.
                ml_line = f"[yellow]no ML backend[/yellow] ({exc}; retry: hitl labelstudio bootstrap)"
        store.save_project(info.project_id, settings.labelstudio.project_title, info.webhook_id, taxonomy)
        state["project_id"] = info.project_id
        console.print(
            f"[green]✓[/green] Label Studio project {info.project_id} with webhook -> {api}; {ml_line}"
        )

        # 6. API keys (kept in a 0600 file so that re-running prints them again)
        keys = _keys(store, up_dir)

        # 7. The stream of new items, in the background at demo.stream_items_per_s
        started["stream"] = _start_stream(up_dir, env, settings.demo.stream_items_per_s) or started.get(
            "stream", False
        )
    finally:
        store.close()
    _summary(settings, keys, state)


def _keys(store: Any, up_dir: Path) -> dict[str, str]:
    from serving.keys import create_key

    path = up_dir / KEYS_FILE
    keys: dict[str, str] = {k: v for k, v in read_json(path).items() if isinstance(v, str)}
    for role in KEY_ROLES:
        if role not in keys:
            keys[role] = create_key(store, f"hitl-up-{role}", role)[1]
    write_json(path, keys, mode=0o600)
    return keys


def _summary(settings: Settings, keys: dict[str, str], state: dict[str, Any]) -> None:
    ls = settings.labelstudio
    project = state.get("project_id")
    console.rule("[bold]hitl is up")
    console.print(f"Label Studio  {mask_credentials(ls.base_url)}/projects/{project or ''}")
    if settings.dev_mode and not ls.url:
        # The shipped dev login of the local Label Studio: printed so a person can sign in at once.
        console.print(f"   login      {ls.username} / {ls.password.get_secret_value()}  (local dev login)")
    else:
        console.print(f"   login      {ls.username} (password: labelstudio.password, never printed)")
    console.print(f"MLflow UI     {mlflow_url(settings)}  (experiment '{settings.mlflow.experiment}')")
    console.print(f"Serving API   {settings.serving.base_url}/docs")
    console.print(
        f"Dashboard     {settings.serving.base_url}/dashboard  (sign in with the product_owner key)"
    )
    console.print(f"API keys      {settings.state_dir / 'up' / 'keys.json'} (file mode 0600)")
    console.print("   export HITL_API_KEY=$(python3 -c \"import json;print(json.load(open('"
                  f"{settings.state_dir / 'up' / 'keys.json'}'))['ml_engineer'])\")")  # fmt: skip
    console.print("Next:")
    console.print(
        "  1. Open the project in Label Studio, click 'Label All Tasks', pick the right category, Submit;"
    )
    console.print(
        "     or let a simulated merchandiser work that queue: .venv/bin/hitl demo review --minutes 10"
    )
    console.print(
        f"  2. After {settings.retrain.retrain_every_n_corrections} corrections a retrain starts by itself "
        "(or: .venv/bin/hitl retrain)."
    )
    console.print("  3. Watch the run in MLflow; `hitl models list` shows versions and the gate's decisions.")
    console.print(
        "  4. Watch the escalation rate fall on the dashboard (GET /v1/metrics/dashboard as JSON), "
        "or write a report: hitl report --out DIR."
    )
    console.print("  Stop everything with `make down`.")


def down(ctx: typer.Context) -> None:
    """Stop what `hitl up` started (and nothing else)."""
    from labeling.server import LabelStudioServer

    settings = _settings(ctx)
    up_dir = up_dir_of(settings)
    with _exclusive(up_dir):
        state = read_state(up_dir)
        started: dict[str, bool] = state.get("started", {})
        if _stop_pid(up_dir / "stream.pid", STREAM_MARKER):
            console.print("stopped the item stream")
        if _stop_pid(up_dir / "serving.pid", "uvicorn", SERVING_STOP_GRACE_S):
            console.print("stopped the serving API")
        if _stop_pid(up_dir / "mlflow.pid", "mlflow"):
            console.print("stopped MLflow")
        if (
            started.get("labelstudio")
            and not settings.labelstudio.url
            and LabelStudioServer(settings.labelstudio, settings.state_dir).stop()
        ):
            console.print("stopped Label Studio")
        state["started"] = {}
        save_state(up_dir, state)
        console.print("down.")
