"""`hitl simulate / compare / guarantee` on a tiny synthetic catalog with the fast hashing encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hitl import cli_experiments
from hitl.settings import HeadSettings, LearnerSettings, Settings
from learner.cache import EmbeddingCache
from learner.synthetic import generate_catalog, write_catalog
from tests.unit.experiments.support import HashingEncoder


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[typer.Typer, Settings, Path]:
    settings = Settings(
        state_dir=tmp_path / "state",
        learner=LearnerSettings(head=HeadSettings(epochs=20)),
    )
    monkeypatch.setattr(
        cli_experiments, "load_embedder", lambda s: EmbeddingCache(s.cache_dir, HashingEncoder())
    )
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_experiments.register(app)
    catalog = write_catalog(generate_catalog(700, seed=1), tmp_path / "tiny.jsonl")
    return app, settings, catalog


TINY = ["--seed-size", "60", "--batch", "20", "--rounds", "2", "--seeds", "1", "--no-mlflow"]


def test_compare_writes_figures_and_summary(env: tuple[typer.Typer, Settings, Path], tmp_path: Path) -> None:
    app, settings, catalog = env
    out = tmp_path / "out"
    args = ["compare", "--catalog", str(catalog), "--strategies", "random,margin", *TINY, "--out", str(out)]
    result = CliRunner().invoke(app, args, obj=settings)
    assert result.exit_code == 0, result.output
    for name in ("learning_curves.png", "escalation_curves.png", "risk_coverage.png", "summary.md"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"random", "margin"}
    assert summary["strategies"]["random"]["label_efficiency_ratio"] == 1.0
    assert len((out / "runs" / "margin" / "seed0.jsonl").read_text().splitlines()) == 1 + 3 + 1

    again = CliRunner().invoke(app, args, obj=settings)
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output


def test_guarantee_writes_its_report(env: tuple[typer.Typer, Settings, Path], tmp_path: Path) -> None:
    app, settings, catalog = env
    out = tmp_path / "g"
    args = ["guarantee", "--catalog", str(catalog), "--splits", "2", "--train-size", "100", "--out", str(out)]
    result = CliRunner().invoke(app, args, obj=settings)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "guarantee.json").read_text())["splits"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--strategy", "nope"], "valid"),
        (["simulate", "--batch", "0"], "--batch"),
        (["simulate", "--target", "1.5"], "--target"),
        (["simulate", "--guarantee", "sometimes"], "high_probability, expected"),
        (["simulate", "--audit-share", "1.5"], "audit_share"),
        (["simulate", "--seed-size", "5", "--batch", "5", "--seeds", "1", "--no-mlflow"], "seed labels"),
        (["simulate", "--through-api", "--batch", "0"], "--batch"),  # validated like in-process
        (["compare", "--strategies", "margin"], "random"),
        (["guarantee", "--splits", "0"], "--splits"),
    ],
)
def test_bad_arguments_fail_clearly(
    env: tuple[typer.Typer, Settings, Path], args: list[str], message: str
) -> None:
    app, settings, catalog = env
    result = CliRunner().invoke(app, [*args, "--catalog", str(catalog)], obj=settings)
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_catalog_fails_clearly(env: tuple[typer.Typer, Settings, Path], tmp_path: Path) -> None:
    app, settings, _ = env
    result = CliRunner().invoke(app, ["simulate", "--catalog", str(tmp_path / "no.jsonl")], obj=settings)
    assert result.exit_code == 2
    assert "not found" in result.output


def test_simulate_writes_one_file_per_seed(env: tuple[typer.Typer, Settings, Path], tmp_path: Path) -> None:
    app, settings, catalog = env
    args = ["simulate", "--catalog", str(catalog), "--strategy", "entropy", *TINY, "--seeds", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s")], obj=settings)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s" / "runs" / "entropy").iterdir()) == [
        "seed0.jsonl",
        "seed1.jsonl",
    ]


def test_a_catalog_sorted_by_category_is_flagged_before_it_is_streamed(
    env: tuple[typer.Typer, Settings, Path], tmp_path: Path
) -> None:
    app, settings, catalog = env
    products = sorted(generate_catalog(700, seed=1), key=lambda p: tuple(p.category or ()))
    by_category = write_catalog(products, tmp_path / "sorted.jsonl")
    warned: dict[str, bool] = {}
    for name, path in (("shuffled", catalog), ("sorted", by_category)):
        args = ["simulate", "--catalog", str(path), "--strategy", "random", *TINY]
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / name)], obj=settings)
        assert result.exit_code == 0, result.output
        # Whitespace-normalised: a long temporary path must not decide where a line breaks.
        warned[name] = "looks ordered by category" in " ".join(result.output.split())
    assert warned == {"shuffled": False, "sorted": True}
