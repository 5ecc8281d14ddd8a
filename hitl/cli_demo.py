"""`hitl demo stream` / `hitl demo review`: the demo loop that `hitl up` starts, and a simulated merchandiser.

- `stream` sends the demo catalog's items after the seed to `POST /v1/predict` at a steady rate
  (`demo.stream_items_per_s`), as new items reach a real catalog. `hitl up` runs it in the background;
  it resumes where it stopped (`<state_dir>/up/stream.json`) and logs each batch's decisions
  (`stream.jsonl`: time, items, escalated, model versions), the escalation rate as the stream saw it.
- `review` is a merchandiser who works in Label Studio's own queue order through its API
  (`labeling.demo.SimulatedMerchandiser`): the corrections go through Label Studio's webhooks into the
  retrain loop like anyone's. It prints the escalation rate of the stream each minute and which model
  version answered, so you can watch the rate fall as versions are promoted. Its reviews are logged
  (`review.jsonl`); `python -m experiments.demo_curve` turns both logs into the published figure.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console

from hitl.context import settings_from
from hitl.settings import Settings
from hitl.up_state import (
    KEYS_FILE,
    read_json,
    read_state,
    split_demo,
    stack_settings,
    up_dir_of,
    write_json,
)
from labeling.exceptions import LabelingError

if TYPE_CHECKING:
    from learner.data import Product

app = typer.Typer(help="The demo loop: a steady stream of new items, and a simulated merchandiser.")
console = Console()
err_console = Console(stderr=True)

STREAM_PROGRESS = "stream.json"
STREAM_LOG = "stream.jsonl"
REVIEW_LOG = "review.jsonl"
# A stream batch that fails (the API restarting, overloaded) is retried after this, doubling up to the cap.
STREAM_RETRY_S = (1.0, 30.0)
# Client errors that a later attempt can cure (a timeout, too many requests); every other 4xx cannot.
RETRIED_CLIENT_ERRORS = frozenset({408, 425, 429})
# `review --n N` without --minutes stops when Label Studio serves nothing for this long.
IDLE_STOP_S = 120.0
MAX_FAILURES = 5  # consecutive failed Label Studio calls before `review` gives up


def _settings(ctx: typer.Context) -> Settings:
    return stack_settings(settings_from(ctx))


def _catalog_and_seed(settings: Settings, up_dir: Path) -> tuple[Path, int]:
    state = read_state(up_dir)
    catalog = Path(state.get("catalog") or up_dir / "catalog.jsonl")
    if not catalog.is_file():
        err_console.print(f"[red]no demo catalog at {catalog}[/red]: run `make up` first")
        raise typer.Exit(1)
    return catalog, int(state.get("seed_size", settings.demo.seed_size))


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def _service_key(up_dir: Path) -> str:
    key = read_json(up_dir / KEYS_FILE).get("service")
    if not isinstance(key, str):
        err_console.print(f"[red]no service API key in {up_dir / KEYS_FILE}[/red]: run `make up` first")
        raise typer.Exit(1)
    return key


def _item(p: Any) -> dict[str, Any]:
    return {"id": p.id, "title": p.title, "description": p.description, "brand": p.brand, "price": p.price}


def _products(path: Path) -> list[Product]:
    """The catalog's products, or exit 2 saying why the file cannot be read."""
    from learner.data import load_catalog
    from learner.exceptions import LearnerError

    try:
        return load_catalog(path).products
    except (LearnerError, OSError, ValueError) as exc:
        err_console.print(f"[red]catalog {path}:[/red] {exc}")
        raise typer.Exit(2) from exc


def _wait_to_retry(done: int, why: str, retry: float) -> float:
    """Sleep `retry` seconds before the batch at item `done` is sent again; the next wait (doubling)."""
    console.print(f"batch at item {done} failed ({why}); retrying in {retry:g} s")
    time.sleep(retry)
    return min(retry * 2, STREAM_RETRY_S[1])


def _detail(answer: httpx.Response) -> str:
    """The API's reason for refusing a batch, short (422: the fields and messages)."""
    try:
        detail = answer.json().get("detail")
    except ValueError:
        return answer.text[:200]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in detail[:3]
        )[:300]
    return str(detail)[:300]


@app.command("stream")
def stream(
    ctx: typer.Context,
    rate: Annotated[
        float | None, typer.Option(min=0.01, help="items per second (default: demo.stream_items_per_s)")
    ] = None,
) -> None:
    """Send the catalog's items after the seed to /v1/predict at a steady rate; resumes where it stopped."""
    settings = _settings(ctx)
    up_dir = up_dir_of(settings)
    catalog, seed_size = _catalog_and_seed(settings, up_dir)
    _, items = split_demo(_products(catalog), seed_size)
    per_s = rate or settings.demo.stream_items_per_s
    interval = settings.demo.stream_interval_s
    per_batch = max(1, round(per_s * interval))
    progress_path = up_dir / STREAM_PROGRESS
    done = int(read_json(progress_path).get("streamed", 0))
    console.print(
        f"streaming {len(items) - done} of {len(items)} items at {per_s:g}/s "
        f"({per_batch} every {interval:g} s) to {settings.serving.base_url}/v1/predict"
    )
    headers = {"Authorization": f"Bearer {_service_key(up_dir)}"}
    retry = STREAM_RETRY_S[0]
    minute: Counter[str] = Counter()
    minute_start = time.monotonic()
    next_at = time.monotonic()
    with httpx.Client(base_url=settings.serving.base_url, headers=headers, timeout=120.0) as client:
        while done < len(items):
            batch = items[done : done + per_batch]
            try:
                answer = client.post("/v1/predict", json={"items": [_item(p) for p in batch]})
                answer.raise_for_status()
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status in (401, 403):  # no retry fixes a refused key
                    err_console.print(
                        f"[red]the API refused the stream's service key (HTTP {status})[/red]; "
                        "run `make up` again to issue the stack's keys"
                    )
                    raise typer.Exit(1) from exc
                if 400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS:
                    # This batch can never be accepted as it is (e.g. 422): say which and go on, or
                    # the stream would resend it forever.
                    err_console.print(
                        f"[yellow]batch at item {done} refused (HTTP {status}): {_detail(exc.response)}; "
                        f"skipping its {len(batch)} items[/yellow]"
                    )
                    refused = {
                        "n": 0,
                        "escalated": 0,
                        "versions": {},
                        "skipped": len(batch),
                        "status": status,
                    }
                    _append(up_dir / STREAM_LOG, {"t": time.time(), **refused})
                    done += len(batch)
                    write_json(progress_path, {"streamed": done, "total": len(items)})
                    continue
                retry = _wait_to_retry(done, f"HTTP {status}", retry)
                continue
            except httpx.HTTPError as exc:
                # The stream must survive an API restart or a 503 under load: nothing is lost, the batch
                # is sent again.
                retry = _wait_to_retry(done, type(exc).__name__, retry)
                continue
            retry = STREAM_RETRY_S[0]
            predictions = answer.json()["predictions"]
            escalated = sum(p["decision"] == "escalated" for p in predictions)
            versions = Counter(str(p["model_version"]) for p in predictions)
            _append(
                up_dir / STREAM_LOG,
                {"t": time.time(), "n": len(predictions), "escalated": escalated, "versions": dict(versions)},
            )
            done += len(batch)
            write_json(progress_path, {"streamed": done, "total": len(items)})
            minute.update(n=len(predictions), escalated=escalated)
            if time.monotonic() - minute_start >= 60 or done >= len(items):
                console.print(
                    f"{done}/{len(items)} streamed; last minute: escalation "
                    f"{minute['escalated'] / max(minute['n'], 1):.2f} of {minute['n']}, "
                    f"model {', '.join(sorted(versions))}"
                )
                minute, minute_start = Counter(), time.monotonic()
            # The next batch one interval after this one was due, never in a burst to catch up: after an
            # outage the stream goes on at its rate instead of flooding the queue with what it missed.
            next_at = max(next_at + interval, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
    console.print(f"the stream is done: {len(items)} items")


@dataclass
class _Minute:
    """What the stream saw in the last minute: items, escalations, model versions."""

    items: int = 0
    escalated: int = 0
    versions: str = "-"


def _stream_since(log: Path, since: float) -> _Minute:
    minute = _Minute()
    seen: Counter[str] = Counter()
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return minute
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("t", 0) >= since:
            minute.items += int(record["n"])
            minute.escalated += int(record["escalated"])
            seen.update(record.get("versions", {}))
    minute.versions = ", ".join(v for v, _ in seen.most_common()) or "-"
    return minute


@app.command("review")
def review(
    ctx: typer.Context,
    n: Annotated[int | None, typer.Option("--n", min=1, help="stop after this many tasks")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.1, help="stop after this long")] = None,
    noise: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="chance of a wrong label (a wrong suggestion clicked)")
    ] = 0.0,
    pace: Annotated[float, typer.Option(min=0.0, help="seconds spent on each task")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the noise")] = 0,
    catalog: Annotated[
        Path | None, typer.Option(help="ground truth (default: the catalog `hitl up` used)")
    ] = None,
) -> None:
    """A simulated merchandiser: annotates tasks in Label Studio's queue order, through its API."""
    from labeling.client import LabelStudioClient
    from labeling.config import Taxonomy
    from labeling.demo import SimulatedMerchandiser
    from learner.data import label_of

    if n is None and minutes is None:
        err_console.print("[red]say how long to review:[/red] --n N (tasks) and/or --minutes M")
        raise typer.Exit(2)
    settings = _settings(ctx)
    up_dir = up_dir_of(settings)
    truth_path = catalog or _catalog_and_seed(settings, up_dir)[0]
    products = _products(truth_path)
    level = settings.learner.label_level
    truth = {p.id: label_of(p, level) for p in products if p.category}
    taxonomy = Taxonomy.from_paths(sorted(set(truth.values())))
    deadline = time.monotonic() + minutes * 60 if minutes else float("inf")
    tally: Counter[str] = Counter()
    try:
        with LabelStudioClient.from_settings(settings.labelstudio) as client:
            project_id = read_state(up_dir).get("project_id")
            if project_id is None:
                found = client.find_project(settings.labelstudio.project_title)
                project_id = found["id"] if found else None
            if project_id is None:
                title = settings.labelstudio.project_title
                err_console.print(f"[red]no Label Studio project {title!r}[/red]: run `make up` first")
                raise typer.Exit(1)
            merchandiser = SimulatedMerchandiser(
                client, int(project_id), taxonomy, truth, noise=noise, seed=seed
            )
            console.print(
                f"reviewing project {project_id} in Label Studio's queue order"
                + (f", {n} tasks" if n else "")
                + (f", {minutes:g} min" if minutes else "")
                + f", noise {noise:g}, {pace:g} s per task; Ctrl-C stops"
            )
            _review_loop(merchandiser, tally, up_dir, n=n, deadline=deadline, pace=pace)
    except LabelingError as exc:
        err_console.print(f"[red]Label Studio:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("stopped")
    _summary(tally)


def _review_loop(
    merchandiser: Any, tally: Counter[str], up_dir: Path, *, n: int | None, deadline: float, pace: float
) -> None:
    start = last_task = time.monotonic()
    next_status = start + 60
    failures = 0
    while (n is None or tally["tasks"] < n) and time.monotonic() < deadline:
        try:
            outcome = merchandiser.review_next()
        except LabelingError as exc:
            # One refused call must not end a long session: Label Studio busy or restarting. Give up
            # only when it keeps failing.
            failures += 1
            if failures >= MAX_FAILURES:
                raise
            console.print(f"Label Studio failed ({exc}); retrying in {2**failures} s")
            time.sleep(2**failures)
            continue
        failures = 0
        now = time.monotonic()
        if now >= next_status:
            _status(tally, up_dir / STREAM_LOG, int(now - start) // 60)
            next_status += 60
        if outcome is None:
            if deadline == float("inf") and now - last_task > IDLE_STOP_S:
                console.print(f"the queue stayed empty for {IDLE_STOP_S:g} s: stopping")
                return
            time.sleep(2.0)  # the queue is empty for now; the stream brings new items
            continue
        last_task = now
        if outcome.gone:
            tally["gone"] += 1
            continue
        tally["tasks"] += 1
        tally["skipped" if outcome.skipped else "labels"] += 1
        tally["one_click"] += outcome.one_click
        tally["wrong"] += not outcome.skipped and not outcome.correct
        _append(up_dir / REVIEW_LOG, {"t": time.time(), **asdict(outcome)})
        if pace:
            time.sleep(pace)


def _status(tally: Counter[str], stream_log: Path, minute_no: int) -> None:
    minute = _stream_since(stream_log, time.time() - 60)
    rate = f"{minute.escalated / minute.items:.2f}" if minute.items else "n/a"
    console.print(
        f"[{minute_no:>3} min] reviewed {tally['labels']} (one click "
        f"{tally['one_click'] / max(tally['labels'], 1):.0%}); the stream's last minute: escalation "
        f"{rate} of {minute.items} items, model {minute.versions}"
    )


def _summary(tally: Counter[str]) -> None:
    labels = tally["labels"]
    console.print(
        f"done: {labels} labels ({tally['one_click']} by one click, {tally['wrong']} wrong on purpose), "
        f"{tally['skipped']} skipped (no known category), {tally['gone']} left the queue while open "
        "(auto-resolved by a promotion)"
    )
