"""`hitl catalog ...` and `hitl learner ...`: catalogs and offline training of a model bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from hitl.settings import Settings

catalog_app = typer.Typer(
    help="Product catalogs: generate a synthetic one, validate a file.", no_args_is_help=True
)
learner_app = typer.Typer(
    help="Train and inspect model bundles (frozen encoder + calibrated head).", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    from hitl.context import settings_from

    return settings_from(ctx)


@catalog_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="JSONL file to write")],
    n_items: Annotated[int, typer.Option("--n", min=1, help="number of products")] = 2000,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing file at --out")] = False,
) -> None:
    """Write a seeded synthetic catalog (about 20 categories) for offline demos and tests."""
    from learner.synthetic import generate_catalog, write_catalog

    if out.is_dir():
        err_console.print(f"[red]{out} is a directory; --out names the .jsonl file to write[/red]")
        raise typer.Exit(2)
    if out.exists() and not overwrite:
        err_console.print(f"[red]{out} exists; pass --overwrite to replace it[/red]")
        raise typer.Exit(2)
    products = generate_catalog(n_items, seed=seed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_catalog(products, out)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot write {out}: {exc}[/red]")
        raise typer.Exit(2) from exc
    n_classes = len({" > ".join(p.category or []) for p in products})
    console.print(f"wrote {len(products)} products in {n_classes} categories to {out}")


@catalog_app.command("validate")
def validate(path: Annotated[Path, typer.Argument(help="JSONL or CSV catalog")]) -> None:
    """Report every bad record with its line number; exit 1 when there is any."""
    from learner.data import load_catalog
    from learner.exceptions import LearnerError

    try:
        catalog = load_catalog(path, require_category=False, strict=False)
    except (LearnerError, OSError, ValueError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for problem in catalog.problems:
        err_console.print(f"{path}:{problem.line}: {problem.reason}")
    console.print(f"{len(catalog.products)} good record(s), {len(catalog.problems)} bad")
    if catalog.problems:
        raise typer.Exit(1)
    if not catalog.products:
        err_console.print(f"[red]{path} holds no records[/red]")
        raise typer.Exit(1)


@learner_app.command("train")
def train(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Option(help="labelled JSONL or CSV catalog")],
    out: Annotated[
        Path | None, typer.Option(help="bundle directory (default: <state_dir>/models/<timestamp>)")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=10, help="use only the first N labelled items")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a bundle already at --out")] = False,
) -> None:
    """Train a bundle (head, temperature, and one threshold certified on the calibration split under
    `learner.guarantee`) and report test metrics."""
    from datetime import UTC, datetime

    from learner.bundle import BUNDLE_REF_PREFIX
    from learner.cache import cached_encoder, embed_in_chunks
    from learner.data import build_dataset, group_split, load_catalog
    from learner.exceptions import LearnerError
    from learner.features import HeadInputs
    from learner.finetune import TUNED_ENCODER_DIR, tune_encoder
    from learner.loop import training_config
    from learner.pii import describe_error
    from learner.training import train_bundle

    settings = _settings(ctx)
    cfg = settings.learner
    try:  # what the catalog itself gets wrong, before any model is loaded
        products = load_catalog(catalog).products
        if limit is not None:
            products = [p for p in products if p.category][:limit]
        dataset = build_dataset(products, level=cfg.label_level, min_class_size=cfg.min_class_size)
    except (LearnerError, OSError, ValueError) as exc:
        err_console.print(f"[red]catalog {catalog}:[/red] {exc}")
        raise typer.Exit(2) from exc
    target_dir = out or settings.models_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if target_dir.exists() and not target_dir.is_dir():  # said now, not after the training
        err_console.print(f"[red]--out {target_dir} is a file; it names the bundle's folder[/red]")
        raise typer.Exit(2)
    if target_dir.is_dir() and any(target_dir.iterdir()) and not overwrite:  # said before the training
        err_console.print(
            f"[red]--out {target_dir} is not empty; pass --overwrite to replace the bundle there[/red]"
        )
        raise typer.Exit(2)
    try:
        target_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err_console.print(f"[red]cannot write the bundle under {target_dir.parent}:[/red] {exc}")
        raise typer.Exit(2) from None
    # A tuned encoder is written beside the target first: a failed or interrupted run leaves the
    # target as it was (an existing bundle's encoder must not change under its manifest).
    staged_encoder = target_dir.with_name(f".{target_dir.name}.{TUNED_ENCODER_DIR}.partial")
    shutil.rmtree(staged_encoder, ignore_errors=True)
    cache = None
    try:
        split = group_split(
            dataset,
            calibration_fraction=cfg.calibration_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
        )
        texts = [str(t) for t in dataset.texts]
        labels = [str(label) for label in dataset.labels]
        config = training_config(cfg)
        features = config.features
        if cfg.finetune.enabled:
            # As a retrain does it: tuned on the training split only, stored inside the bundle.
            console.print(f"fine-tuning {cfg.encoder} on {len(split.train)} training labels ...")
            tuned = tune_encoder(
                cfg,
                [texts[i] for i in split.train],
                [labels[i] for i in split.train],
                staged_encoder,
                progress=True,
            )
            console.print(f"fine-tuned in {tuned.seconds:.0f} s ({tuned.steps} steps)")
            embeddings = tuned.encoder.encode(texts)
            encoder_ref, encoder_id = f"{BUNDLE_REF_PREFIX}{TUNED_ENCODER_DIR}", tuned.encoder.encoder_id
            extra: dict[str, object] = {"finetune": tuned.summary()}
        else:
            # The cache serving and retraining read, so a bundle trained here warms theirs.
            cache = cached_encoder(cfg, settings.cache_dir, progress=True)
            embeddings = embed_in_chunks(cache, texts)
            encoder_ref, encoder_id, extra = cfg.encoder, cache.encoder_id, {}
        # The cache stores encoder embeddings only; the n-gram part is rebuilt each time (as CSR,
        # which the head fits faster).
        inputs = features.sparse_inputs(embeddings, texts)

        def part(indices: NDArray[np.int64]) -> tuple[HeadInputs, list[str]]:
            return inputs[indices], [labels[i] for i in indices]

        x_tr, y_tr = part(split.train)
        x_cal, y_cal = part(split.calibration)
        x_te, y_te = part(split.test)
        result = train_bundle(
            x_tr,
            y_tr,
            x_cal,
            y_cal,
            config=config,
            encoder_ref=encoder_ref,
            encoder_id=encoder_id,
            x_test=x_te,
            y_test=y_te,
            metadata={
                "catalog": catalog.name,
                "label_level": cfg.label_level,
                "encoder_max_length": cfg.max_length,
                **extra,
            },
        )
    except BaseException as exc:
        shutil.rmtree(staged_encoder, ignore_errors=True)
        if isinstance(exc, LearnerError | OSError | RuntimeError):  # RuntimeError: torch (out of memory)
            err_console.print(f"[red]training failed:[/red] {describe_error(exc)}")
            raise typer.Exit(1) from exc
        raise

    if staged_encoder.is_dir():
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target_dir / TUNED_ENCODER_DIR, ignore_errors=True)
        staged_encoder.rename(target_dir / TUNED_ENCODER_DIR)
    result.bundle.save(target_dir)  # the manifest last: the bundle is complete once it is there
    summary = result.summary()
    (target_dir / "training_report.json").write_text(json.dumps(summary, indent=2, default=float))
    table = Table(title=f"bundle written to {target_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if cache is not None:
        console.print(f"embedding cache: {cache.hits} hit(s), {cache.misses} miss(es)")
