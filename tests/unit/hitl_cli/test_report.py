"""`hitl report --out DIR` against a real SQLite database (seeded history and an empty one)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from hitl import cli, cli_report
from hitl.settings import ServingSettings, Settings
from serving import kpis
from serving.store import Store
from tests.unit.serving.dashboard_seed import BIASED_BRAND, seed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path, serving=ServingSettings(database_url=f"sqlite:///{tmp_path / 'r.db'}")
    )


def _invoke(settings: Settings, out: Path) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(cli_report.report)
    result = CliRunner().invoke(app, ["--out", str(out)], obj=settings, catch_exceptions=False)
    return result.exit_code, result.stderr


def test_report_is_a_registered_command() -> None:
    cli._register()
    assert "report" in {c.name for c in cli.app.registered_commands}


def test_report_writes_html_png_and_json_that_match_the_kpis(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.database_url)
    store.create_all()
    seeded = seed(store)
    store.close()
    out = tmp_path / "report"
    code, stderr = _invoke(settings, out)
    assert code == 0, stderr
    figures = json.loads((out / "kpis.json").read_text())
    assert figures["reviews"]["reviews"] == seeded.reviews
    assert figures["escalation"]["predicted"] == seeded.predictions
    flagged = [s["segment"] for s in figures["segments"]["segments"] if s["flagged"]]
    assert flagged == [BIASED_BRAND]
    charts = ["escalation_over_time", "escalation_by_version", "spot_checks", "reviews_per_day", "queue_age"]
    for name in [*charts, "segments"]:
        assert (out / f"{name}.png").read_bytes().startswith(PNG_MAGIC), name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(charts) + 1  # self-contained
    assert "http://" not in page.replace("http://127.0.0.1:5000", "")  # only MLflow links, no CDN
    assert "rolled_back" in page
    assert "higher error rate" in page


def test_report_of_an_empty_database_explains_itself(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    Store(settings.database_url).create_all()
    out = tmp_path / "empty"
    code, stderr = _invoke(settings, out)
    assert code == 0, stderr
    figures = kpis.DashboardKpis.model_validate_json((out / "kpis.json").read_text())
    assert [e.key for e in figures.empty] == ["no_model", "no_corrections"]
    page = (out / "report.html").read_text()
    assert "No model has served a prediction yet" in page
    assert "<img" not in page
    assert not list(out.glob("*.png"))


def test_report_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    code, stderr = _invoke(settings, tmp_path / "out")
    assert code == 1
    assert "no database at" in stderr
    assert not (tmp_path / "r.db").exists()  # the report never creates one


def test_a_brand_that_looks_like_a_formula_is_drawn_as_text(tmp_path: Path) -> None:
    from sqlalchemy import update

    from serving.store import Item

    settings = _settings(tmp_path)
    store = Store(settings.database_url)
    store.create_all()
    seed(store)
    with store.session() as session:  # anyone who can submit items names the brands
        session.execute(update(Item).where(Item.brand == BIASED_BRAND).values(brand="Deal $\\foo$"))
    store.close()
    out = tmp_path / "report"
    code, stderr = _invoke(settings, out)
    assert code == 0, stderr  # was a matplotlib ParseFatalException and a traceback
    assert "Deal $\\foo$" in (out / "report.html").read_text()
    assert (out / "segments.png").read_bytes().startswith(PNG_MAGIC)
