"""`hitl simulate`, `hitl compare`, `hitl guarantee`: replay a labelled catalog through the loop.

The catalog is embedded once through the embedding cache under the state dir (later runs are cache
hits); simulations train heads only. Per-(strategy, seed) results go to JSONL files under ``--out``
(finished runs are skipped on re-run) and, unless ``--no-mlflow``, to MLflow (tracking URI from
settings; experiment ``<mlflow.experiment>-simulations``), one run per (strategy, seed) with one
metric step per round.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from hitl.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from experiments.simulate import SimulationConfig
    from learner.data import LabeledDataset
    from learner.training import TrainingConfig

console = Console()
err_console = Console(stderr=True)

ALL_STRATEGIES = "random,least_confidence,margin,entropy,batch_diverse"


def _settings(ctx: typer.Context) -> Settings:
    from hitl.context import settings_from

    return settings_from(ctx)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _command_line() -> str:
    return " ".join(["hitl", *(shlex.quote(a) for a in sys.argv[1:])])


def load_embedder(settings: Settings) -> Any:
    """The configured encoder behind the on-disk cache (replaced by a fake in tests)."""
    from learner.cache import cached_encoder

    return cached_encoder(settings.learner, settings.cache_dir, progress=True)


def _load(
    settings: Settings,
    catalog: Path,
    min_class_size: int | None,
    threads: int,
    *,
    out: Path | None,
    streamed: bool = True,
) -> tuple[LabeledDataset, NDArray[np.float32], str]:
    """The catalog as a dataset and its embeddings; what is wrong with it or with `out` said first."""
    import torch

    if out is not None and out.exists() and not out.is_dir():
        raise _fail(f"--out {out} is a file; it names a folder for the runs")

    from learner.data import build_dataset, load_catalog
    from learner.exceptions import LearnerError

    torch.set_num_threads(threads)
    try:
        # Unlabelled items cannot be simulated: `build_dataset` leaves them out, so `problems` holds
        # only records that are bad.
        loaded = load_catalog(catalog, require_category=False, strict=False)
        data = build_dataset(
            loaded.products,
            level=settings.learner.label_level,
            min_class_size=settings.learner.min_class_size if min_class_size is None else min_class_size,
        )
    except (LearnerError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    bad = loaded.problems
    if bad:
        shown = "; ".join(str(p) for p in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        console.print(f"[yellow]{catalog}: {len(bad)} bad record(s) left out:[/yellow] {shown}")
    console.print(
        f"{catalog}: {len(data)} items, {len(data.classes)} classes at level {settings.learner.label_level}"
    )
    if streamed:
        _warn_if_sorted(catalog, data)
    from learner.cache import embed_in_chunks

    embedder = load_embedder(settings)
    x = embed_in_chunks(embedder, [str(t) for t in data.texts])
    return data, x, str(embedder.encoder_id)


def _warn_if_sorted(catalog: Path, data: LabeledDataset) -> None:
    """The loop streams the file in its order: say so when that order looks like a sort by category."""
    from experiments.simulate import arrival_clustering, looks_sorted

    if looks_sorted(data.y):
        adjacent, chance = arrival_clustering(data.y)
        err_console.print(
            f"[yellow]warning:[/yellow] {catalog} looks ordered by category: {adjacent:.0%} of neighbouring "
            f"items share a category (a random order gives {chance:.0%}). The simulation streams items in "
            "file order, so it would show one category at a time; shuffle the file first (e.g. `shuf`) "
            "unless this is the order items really arrive in.",
            soft_wrap=True,  # one line: rich's wrapping would split the path (the terminal wraps it)
        )


def _training(settings: Settings, target: float, delta: float | None) -> TrainingConfig:
    from learner.loop import training_config

    device = "cpu" if settings.learner.device == "auto" else settings.learner.device
    return training_config(settings.learner, device=device, target=target, delta=delta)


class MlflowRunLogger:
    """One MLflow run per (strategy, seed); one metric step per round."""

    def __init__(self, settings: Settings) -> None:
        experiment = f"{settings.mlflow.experiment}-simulations"
        self.settings = settings.model_copy(
            update={"mlflow": settings.mlflow.model_copy(update={"experiment": experiment})}
        )
        self.run_id: str | None = None

    def start(self, config: SimulationConfig, params: Mapping[str, Any]) -> None:
        from serving import tracking

        client = tracking.client(self.settings)
        run = client.create_run(
            tracking.experiment_id(self.settings),
            run_name=f"{config.strategy}-seed{config.seed}",
            tags={tracking.KIND_TAG: "simulation"},
        )
        self.run_id = str(run.info.run_id)
        tracking.log_params(self.settings, self.run_id, params)

    def round(self, step: int, metrics: Mapping[str, Any]) -> None:
        from serving import tracking

        if self.run_id is not None:
            tracking.log_metrics(self.settings, self.run_id, metrics, step=step)

    def end(self, *, failed: bool) -> None:
        from serving import tracking

        if self.run_id is not None:
            tracking.end_run(self.settings, self.run_id, failed=failed)


def _base_config(
    settings: Settings,
    *,
    strategy: str,
    seed_size: int,
    batch: int,
    rounds: int,
    target: float,
    reviewer_noise: float,
    guarantee: str,
    limit: int | None,
    audit_share: float = 0.4,
) -> SimulationConfig:
    from dataclasses import replace

    from experiments.simulate import SimulationConfig
    from learner.certify import GUARANTEES
    from learner.loop import AuditPolicy
    from serving.retrain.gate import gate_policy

    guarantee = guarantee or settings.learner.guarantee
    if guarantee not in GUARANTEES:
        raise _fail(f"--guarantee must be one of {', '.join(GUARANTEES)}, got {guarantee!r}")
    try:
        return SimulationConfig(
            strategy=strategy,
            seed_size=seed_size,
            batch=batch,
            rounds=rounds,
            reviewer_noise=reviewer_noise,
            audit_share=audit_share,
            test_fraction=settings.learner.test_fraction,
            limit=limit,
            training=replace(_training(settings, target, None), guarantee=guarantee),
            routing=settings.routing,
            audit=AuditPolicy.of(settings.learner.audit),
            gate=gate_policy(settings.retrain),
            auto_resolve_on_promotion=settings.retrain.auto_resolve_on_promotion,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc


CatalogOpt = Annotated[
    Path,
    typer.Option(
        "--catalog",
        help="labelled JSONL/CSV catalog, in arrival order (a file sorted by category is flagged)",
    ),
]
SeedSizeOpt = Annotated[int, typer.Option("--seed-size", help="labelled items before the first round")]
BatchOpt = Annotated[int, typer.Option("--batch", help="review budget per round")]
RoundsOpt = Annotated[int, typer.Option("--rounds", help="review rounds")]
TargetOpt = Annotated[float, typer.Option("--target", help="auto-accept accuracy target")]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="seeds 0..N-1 (test split, ties, noise)")]
NoiseOpt = Annotated[float, typer.Option("--reviewer-noise", help="chance a reviewer label is wrong")]
GuaranteeOpt = Annotated[
    str,
    typer.Option("--guarantee", help="high_probability | expected (default: learner.guarantee)"),
]
AuditOpt = Annotated[
    float,
    typer.Option(
        "--audit-share",
        help="expected share of each round's review budget spent on audits (drawn at routing time, "
        "by learner.audit's design, uniform by default; the most recent learner.audit.certify_window "
        "of them certify, "
        "older ones train)",
    ),
]
MinClassOpt = Annotated[
    int | None,
    typer.Option("--min-class-size", min=1, help="drop smaller classes (default: learner setting)"),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="use only the first N stream items")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="output dir (default: <state_dir>/experiments/...)")
]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="torch threads")]
MlflowOpt = Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log runs to MLflow")]


def _check_common(seed_size: int, batch: int, rounds: int, target: float, seeds: int, noise: float) -> None:
    for name, value in (
        ("--seed-size", seed_size),
        ("--batch", batch),
        ("--rounds", rounds),
        ("--seeds", seeds),
    ):
        if value < 1:
            raise _fail(f"{name} must be >= 1, got {value}")
    if not 0.0 < target < 1.0:
        raise _fail(f"--target must be in (0, 1), got {target}")
    if not 0.0 <= noise < 1.0:
        raise _fail(f"--reviewer-noise must be in [0, 1), got {noise}")


def _check_catalog(catalog: Path) -> None:
    if not catalog.is_file():
        raise _fail(f"catalog file not found: {catalog}")


def _progress_round(total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _run_all(
    settings: Settings,
    data: LabeledDataset,
    x: NDArray[np.float32],
    base: SimulationConfig,
    strategies: list[str],
    seeds: int,
    out: Path,
    extra: dict[str, Any],
    mlflow: bool,
) -> dict[str, list[list[dict[str, Any]]]]:
    from experiments.compare import run_comparison

    total = len(strategies) * seeds * (base.rounds + 1)
    with _progress_round(total) as bar:
        task = bar.add_task("simulating", total=total)

        def on_round(row: dict[str, Any]) -> None:
            bar.update(task, advance=1, description=f"round {row['round']} acc {row['accuracy']:.3f}")

        def on_run(name: str, seed: int, skipped: bool) -> None:
            if skipped:
                bar.update(task, advance=base.rounds + 1)
            console.print(f"{name} seed {seed}: {'skipped (finished earlier)' if skipped else 'done'}")

        try:
            return run_comparison(
                data,
                x,
                base,
                strategies=strategies,
                seeds=list(range(seeds)),
                out_dir=out,
                extra=extra,
                logger_factory=(lambda: MlflowRunLogger(settings)) if mlflow else None,
                on_run=on_run,
                on_round=on_round,
            )
        except ValueError as exc:  # a configuration the catalog cannot run (e.g. no seed audits)
            raise _fail(str(exc)) from exc


def _run_through_api(
    settings: Settings,
    catalog: Path,
    data: LabeledDataset,
    x: NDArray[np.float32],
    base: SimulationConfig,
    seeds: int,
    out: Path,
    extra: dict[str, Any],
    mlflow: bool,
) -> list[list[dict[str, Any]]]:
    """`--through-api`: each (strategy, seed) run drives its own serving app (experiments.through_api)."""
    from dataclasses import replace

    from experiments.through_api import ThroughApiError, run_or_skip_through_api
    from learner.data import load_catalog

    products = {p.id: p for p in load_catalog(catalog, strict=False).products}
    runs: list[list[dict[str, Any]]] = []
    total = seeds * (base.rounds + 1)
    with _progress_round(total) as bar:
        task = bar.add_task("simulating through the API", total=total)

        def on_round(row: dict[str, Any]) -> None:
            bar.update(
                task,
                advance=1,
                description=f"round {row['round']} acc {row['accuracy']:.3f} ({row.get('retrain_status')})",
            )

        for seed in range(seeds):
            config = replace(base, seed=seed)
            try:
                rows, skipped = run_or_skip_through_api(
                    data,
                    x,
                    products,
                    config,
                    settings,
                    out,
                    encoder_id=str(extra["encoder_id"]),
                    extra=extra,
                    logger=MlflowRunLogger(settings) if mlflow else None,
                    on_round=on_round,
                )
            except (ThroughApiError, ValueError) as exc:
                raise _fail(f"{base.strategy} seed {seed}: {exc}") from exc
            if skipped:
                bar.update(task, advance=base.rounds + 1)
            state = "skipped (finished earlier)" if skipped else "done"
            console.print(f"{base.strategy} seed {seed}: {state}")
            runs.append(rows)
    return runs


def simulate(
    ctx: typer.Context,
    catalog: CatalogOpt,
    strategy: Annotated[
        str, typer.Option("--strategy", help="query strategy (default: learner setting)")
    ] = "",
    seed_size: SeedSizeOpt = 200,
    batch: BatchOpt = 200,
    rounds: RoundsOpt = 15,
    target: TargetOpt = 0.95,
    seeds: SeedsOpt = 3,
    reviewer_noise: NoiseOpt = 0.0,
    guarantee: GuaranteeOpt = "",
    audit_share: AuditOpt = 0.4,
    min_class_size: MinClassOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = 2,
    mlflow: MlflowOpt = True,
    through_api: Annotated[
        bool,
        typer.Option(
            "--through-api",
            help="drive the real serving app (uvicorn, /v1/predict, Label Studio webhooks, /v1/retrain) "
            "instead of in-process calls; app state per run under <out>/api-state",
        ),
    ] = False,
) -> None:
    """Replay a catalog through route -> review -> retrain with one strategy over several seeds."""
    settings = _settings(ctx)
    strategy = strategy or settings.learner.strategy
    _check_common(seed_size, batch, rounds, target, seeds, reviewer_noise)
    _check_catalog(catalog)
    base = _base_config(
        settings,
        strategy=strategy,
        seed_size=seed_size,
        batch=batch,
        rounds=rounds,
        target=target,
        reviewer_noise=reviewer_noise,
        guarantee=guarantee,
        limit=limit,
        audit_share=audit_share,
    )
    data, x, encoder_id = _load(settings, catalog, min_class_size, threads, out=out)
    extra = {"catalog": catalog.name, "encoder_id": encoder_id, "n_items": len(data)}
    from learner.data import catalog_name

    if through_api:
        out = out or settings.state_dir / "experiments" / f"{catalog_name(catalog)}-api"
        results = {strategy: _run_through_api(settings, catalog, data, x, base, seeds, out, extra, mlflow)}
    else:
        out = out or settings.state_dir / "experiments" / catalog_name(catalog)
        results = _run_all(settings, data, x, base, [strategy], seeds, out, extra, mlflow)
    for seed, rows in enumerate(results[strategy]):
        last = rows[-1]
        console.print(
            f"seed {seed}: {last['labels_used']} labels, accuracy {last['accuracy']:.3f}, "
            f"test escalation {last['test_escalation_rate']:.3f}"
        )
    console.print(f"per-round JSONL under {out / 'runs' / strategy}")


def compare(
    ctx: typer.Context,
    catalog: CatalogOpt,
    strategies: Annotated[str, typer.Option("--strategies", help="comma-separated")] = ALL_STRATEGIES,
    seed_size: SeedSizeOpt = 200,
    batch: BatchOpt = 200,
    rounds: RoundsOpt = 15,
    target: TargetOpt = 0.95,
    seeds: SeedsOpt = 3,
    reviewer_noise: NoiseOpt = 0.0,
    guarantee: GuaranteeOpt = "",
    audit_share: AuditOpt = 0.4,
    min_class_size: MinClassOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = 2,
    mlflow: MlflowOpt = True,
) -> None:
    """Run several strategies x seeds; write learning / escalation / risk-coverage PNGs and a summary."""
    from experiments.compare import BASELINE, write_outputs

    settings = _settings(ctx)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if BASELINE not in names:
        raise _fail(f"--strategies must include the {BASELINE!r} baseline (label-efficiency ratio)")
    _check_common(seed_size, batch, rounds, target, seeds, reviewer_noise)
    _check_catalog(catalog)
    for name in names:  # validate every name before any work
        _base_config(
            settings,
            strategy=name,
            seed_size=seed_size,
            batch=batch,
            rounds=rounds,
            target=target,
            reviewer_noise=reviewer_noise,
            guarantee=guarantee,
            limit=limit,
            audit_share=audit_share,
        )
    base = _base_config(
        settings,
        strategy=names[0],
        seed_size=seed_size,
        batch=batch,
        rounds=rounds,
        target=target,
        reviewer_noise=reviewer_noise,
        guarantee=guarantee,
        limit=limit,
        audit_share=audit_share,
    )
    data, x, encoder_id = _load(settings, catalog, min_class_size, threads, out=out)
    from learner.data import catalog_name

    out = out or settings.state_dir / "experiments" / catalog_name(catalog)
    extra = {"catalog": catalog.name, "encoder_id": encoder_id, "n_items": len(data)}
    results = _run_all(settings, data, x, base, names, seeds, out, extra, mlflow)
    summary = write_outputs(results, out, target=target, command=_command_line())
    console.print(
        f"best strategy {summary['best_strategy']} (label-efficiency ratio "
        f"{summary['best_label_efficiency_ratio']}); wrote PNGs + summary.md/json to {out}"
    )


def guarantee(
    ctx: typer.Context,
    catalog: CatalogOpt,
    splits: Annotated[int, typer.Option("--splits", help="random calibration/test splits")] = 20,
    train_size: Annotated[int, typer.Option("--train-size", help="head training items per split")] = 3000,
    target: TargetOpt = 0.95,
    delta: Annotated[float | None, typer.Option("--delta", help="default: learner setting")] = None,
    min_class_size: MinClassOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = 2,
) -> None:
    """Share of random splits whose auto-accepted test items reach the target accuracy."""
    from experiments.guarantee import GuaranteeConfig, guarantee_markdown, run_guarantee, summarize_guarantee

    settings = _settings(ctx)
    if splits < 1 or train_size < 2:
        raise _fail(f"--splits must be >= 1 and --train-size >= 2, got {splits} and {train_size}")
    if not 0.0 < target < 1.0 or (delta is not None and not 0.0 < delta < 1.0):
        raise _fail(f"--target and --delta must be in (0, 1), got {target} and {delta}")
    _check_catalog(catalog)
    training = _training(settings, target, delta)
    config = GuaranteeConfig(splits=splits, train_size=train_size, training=training)
    data, x, _ = _load(settings, catalog, min_class_size, threads, out=out, streamed=False)
    from learner.data import catalog_name

    out = out or settings.state_dir / "experiments" / catalog_name(catalog)
    out.mkdir(parents=True, exist_ok=True)
    with _progress_round(splits) as bar:
        task = bar.add_task("splits", total=splits)
        rows = run_guarantee(data, x, config, on_split=lambda _row: bar.update(task, advance=1))
    summary = summarize_guarantee(rows, target=target, delta=training.delta)
    command = _command_line()
    summary["command"] = command
    (out / "guarantee.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "guarantee.md").write_text(guarantee_markdown(summary, command), encoding="utf-8")
    console.print(
        f"pass share {summary['pass_share']} (expected >= {1 - training.delta:.2f}), "
        f"coverage {summary['coverage_mean']}; wrote {out / 'guarantee.md'}"
    )


def register(app: typer.Typer) -> None:
    """Add `simulate`, `compare` and `guarantee` to the root app."""
    app.command("simulate")(simulate)
    app.command("compare")(compare)
    app.command("guarantee")(guarantee)
