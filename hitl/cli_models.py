"""`hitl retrain` and `hitl models list|promote|rollback`: the retraining loop, through the serving API.

The API key comes from `--api-key` or `$HITL_API_KEY` (an ml_engineer key; `hitl up` prints one) and is
never printed. The server does the work (training in its retrain worker, never in the request).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hitl.settings import Settings
from learner.pii import mask_credentials

models_app = typer.Typer(help="Registered model versions: list, promote, roll back.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

STAGES = ["queued", "starting", "collecting", "fine-tuning", "embedding", "training", "evaluating",
          "registering", "promoting", "artifacts", "done"]  # fmt: skip

ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="HITL_API_KEY", help="ml_engineer API key", show_default=False),
]
Url = Annotated[str | None, typer.Option("--url", help="serving API (default: from settings)")]


def _settings(ctx: typer.Context) -> Settings:
    from hitl.context import settings_from

    return settings_from(ctx)


def _client(ctx: typer.Context, url: str | None, api_key: str | None) -> httpx.Client:
    if not api_key:
        err_console.print("[red]an API key is needed:[/red] --api-key or $HITL_API_KEY (role ml_engineer)")
        raise typer.Exit(2)
    base = url or _settings(ctx).serving.base_url
    try:
        return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0)
    except httpx.InvalidURL as exc:
        err_console.print(f"[red]not a usable URL:[/red] {mask_credentials(base)} ({exc})")
        raise typer.Exit(2) from None


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        answer = client.request(method, path, **kwargs)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        err_console.print(
            f"[red]cannot reach {mask_credentials(str(client.base_url))}:[/red] {type(exc).__name__}"
        )
        raise typer.Exit(1) from exc
    if answer.status_code >= 400:
        detail = (
            answer.json().get("detail") if "json" in answer.headers.get("content-type", "") else answer.text
        )
        err_console.print(f"[red]{method} {path} -> {answer.status_code}:[/red] {detail}")
        raise typer.Exit(1)
    return answer.json()


def retrain(
    ctx: typer.Context,
    api_key: ApiKey = None,
    url: Url = None,
    wait: Annotated[
        bool, typer.Option("--wait/--detach", help="follow the run to its end, or return")
    ] = True,
    reason: Annotated[str, typer.Option(help="recorded with the run")] = "cli",
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 1800.0,
) -> None:
    """Queue a retrain (coalesced with one already waiting) and follow it with a progress bar."""
    with _client(ctx, url, api_key) as client:
        started = _call(client, "POST", "/v1/retrain", json={"reason": reason})
        run_id = int(started["run_id"])
        console.print(f"retrain run {run_id}: {started['status']}")
        if not wait:
            console.print(f"follow it with: hitl retrain-status {run_id}  (or GET /v1/retrain/{run_id})")
            return
        deadline = time.monotonic() + timeout
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]run {task.fields[run]}[/bold] {task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("queued", total=len(STAGES) - 1, run=run_id)
            while True:
                record = _call(client, "GET", f"/v1/retrain/{run_id}")
                stage = record["stage"]
                name = stage.split(" ")[0]  # "fine-tuning 40/75": the stage and its own progress
                position = STAGES.index(name) if name in STAGES else 0
                progress.update(task, description=stage, completed=position)
                if record["status"] in ("promoted", "rejected", "failed"):
                    progress.update(task, completed=len(STAGES) - 1)
                    break
                if time.monotonic() > deadline:
                    err_console.print(
                        f"[yellow]still {stage} after {timeout:.0f} s; it keeps running[/yellow]"
                    )
                    raise typer.Exit(3)
                time.sleep(0.5)
    _print_run(record)
    if record["status"] == "failed":
        raise typer.Exit(1)


def _print_run(record: dict[str, Any]) -> None:
    colour = {"promoted": "green", "rejected": "yellow", "failed": "red"}.get(record["status"], "white")
    console.print(f"[{colour}]{record['status']}[/{colour}] version={record.get('version')}")
    if record.get("gate_reason"):
        console.print(f"gate: {record['gate_reason']}")
    if record.get("error"):
        console.print(f"error: {record['error']}")
    metrics = record.get("metrics") or {}
    keys = ("accuracy", "macro_f1", "ece", "coverage_at_target", "projected_escalation_rate", "n_labels")
    shown = {k: metrics[k] for k in keys if k in metrics}
    if shown:
        console.print("  ".join(f"{k}={v:.4g}" for k, v in shown.items()))


def retrain_status(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="retrain run id")],
    api_key: ApiKey = None,
    url: Url = None,
) -> None:
    """Show one retrain run."""
    with _client(ctx, url, api_key) as client:
        record = _call(client, "GET", f"/v1/retrain/{run_id}")
    console.print(f"run {run_id}: stage {record['stage']}")
    _print_run(record)


def encoder_cell(version: dict[str, Any]) -> str:
    """A `/v1/models` version's encoder as `hitl models list` shows it: its id, marked when the
    version carries its own fine-tuned encoder (versions from before the tag: blank)."""
    cell = str(version.get("encoder_id") or "")
    if str(version.get("encoder") or "").startswith("fine-tuned"):
        cell += " (fine-tuned)"
    return cell


@models_app.command("list")
def list_models(ctx: typer.Context, api_key: ApiKey = None, url: Url = None) -> None:
    """Registered versions, the champion, and what the gate said."""
    with _client(ctx, url, api_key) as client:
        body = _call(client, "GET", "/v1/models")
    table = Table(
        title=f"{body['registered_model']} (champion: v{body['champion']}, serving: {body['serving']})"
    )
    for column in ("version", "aliases", "gate", "reason / promoted by", "encoder", "created"):
        table.add_column(column)
    for v in body["versions"]:
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            v["gate"] or "",
            v["promoted_by"] or v["gate_reason"] or "",
            encoder_cell(v),
            (v["created_at"] or "")[:19],
        )
    console.print(table)


def _move(
    ctx: typer.Context, version: str, action: str, api_key: str | None, url: str | None, reason: str | None
) -> None:
    with _client(ctx, url, api_key) as client:
        params = {"reason": reason} if reason else None
        body = _call(client, "POST", f"/v1/models/{version}/{action}", params=params)
    console.print(
        f"champion -> v{body['version']} (swapped: {body['swapped']}, Label Studio updated: "
        f"{body['labelstudio_updated']}, auto-resolved {body['auto_resolved']}, "
        f"re-prioritized {body['reprioritized']})"
    )


Reason = Annotated[str | None, typer.Option("--reason", help="why (kept in the audit trail)")]


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument()],
    api_key: ApiKey = None,
    url: Url = None,
    reason: Reason = None,
) -> None:
    """Make VERSION the champion (bypasses the gate; recorded on the version and in the audit trail)."""
    _move(ctx, version, "promote", api_key, url, reason)


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument()],
    api_key: ApiKey = None,
    url: Url = None,
    reason: Reason = None,
) -> None:
    """Point the champion back at VERSION (audited with who and why)."""
    _move(ctx, version, "rollback", api_key, url, reason)
