"""`hitl simulate --through-api` on a tiny synthetic catalog: real MiniLM, real uvicorn, real SQLite, real
MLflow (sqlite) in tmp. One CLI run (module fixture) is inspected by every test: the API's store must hold
the streamed predictions, the webhook corrections and the retrains, and the champion must have moved.

Sized to stay well under a minute on 2 cores: 5 categories, ~360 stream items, 120 seed labels, two
rounds of 40 reviews. Gate tolerances are wide so a retrain on more labels is promoted.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from hitl import cli_experiments
from hitl.settings import (
    HeadSettings,
    LearnerSettings,
    RetrainSettings,
    RoutingSettings,
    Settings,
)
from learner.synthetic import generate_catalog, write_catalog
from serving.retrain import RetrainRun
from serving.store import AuditEvent, Correction, Prediction, Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 2
BATCH = 40
SEED_SIZE = 120
ARGS = [
    "--strategy",
    "margin",
    "--seed-size",
    str(SEED_SIZE),
    "--batch",
    str(BATCH),
    "--rounds",
    str(ROUNDS),
    "--target",
    "0.85",
    "--seeds",
    "1",
    "--threads",
    "1",
    "--no-mlflow",
]
# What the in-process loop writes per round; the API-driven rows must keep every one of them.
IN_PROCESS_KEYS = {
    "round",
    "labels_used",
    "corrections",
    "corrections_at_routing",
    "incoming",
    "escalation_rate",
    "below_threshold_rate",
    "stream_auto_accept_accuracy",
    "queue_size",
    "train_seconds",
    "accuracy",
    "macro_f1",
    "ece",
    "coverage_at_target",
    "auto_accept_coverage",
    "auto_accept_accuracy",
    "test_escalation_rate",
    "classes_auto_accepted",
    "risk_coverage",
}


@dataclass
class Simulated:
    app: typer.Typer
    settings: Settings
    catalog: Path
    out: Path
    output: str
    seconds: float

    @property
    def run_file(self) -> Path:
        return self.out / "runs" / "margin" / "seed0.jsonl"

    @property
    def state(self) -> Path:
        return self.out / "api-state" / "margin" / "seed0"

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(t) for t in self.run_file.read_text().splitlines() if t.strip()]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    tmp = tmp_path_factory.mktemp("through-api")
    settings = Settings(
        state_dir=tmp / "state",
        learner=LearnerSettings(
            device="cpu",
            delta=0.2,
            calibration_fraction=0.3,
            min_class_size=5,
            head=HeadSettings(epochs=60),
        ),
        routing=RoutingSettings(high_value_price=None, novelty_min_similarity=-1.0),
        retrain=RetrainSettings(accuracy_tolerance=0.5, coverage_tolerance=0.5),
    )
    catalog = write_catalog(generate_catalog(450, seed=3, n_categories=5), tmp / "tiny.jsonl")
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_experiments.register(app)
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        started = time.monotonic()
        result = CliRunner().invoke(
            app,
            ["simulate", "--catalog", str(catalog), *ARGS, "--through-api", "--out", str(out)],
            obj=settings,
        )
        seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Simulated(app, settings, catalog, out, result.output, seconds)


def test_cli_through_api_runs_and_writes_rows_with_the_in_process_keys(simulated: Simulated) -> None:
    lines = simulated.lines()
    header, rows, done = lines[0], lines[1:-1], lines[-1]
    assert done == {"done": True}
    config = header["config"]
    assert isinstance(config, dict)
    assert config["through_api"] is True
    assert config["strategy"] == "margin"
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    for row in rows[1:]:
        assert set(row) >= IN_PROCESS_KEYS, IN_PROCESS_KEYS - set(row)
        assert row["retrain_status"] in ("promoted", "rejected", "failed")
    # Each round reviews up to BATCH items: fewer when the queue of open escalations runs short (a
    # confident model on this small catalog auto-accepts most of the stream).
    counts = [int(r["corrections"]) for r in rows]  # type: ignore[call-overload]
    steps = [b - a for a, b in itertools.pairwise(counts)]
    assert counts[0] == 0
    assert all(0 < step <= BATCH for step in steps), counts
    assert rows[-1]["labels_used"] == SEED_SIZE + counts[-1]
    print(f"\nthrough-API simulation took {simulated.seconds:.1f} s")


def test_the_api_recorded_predictions_corrections_and_retrains(simulated: Simulated) -> None:
    rows = simulated.lines()[1:-1]
    streamed = sum(int(r["incoming"]) for r in rows[1:])  # type: ignore[call-overload]
    store = Store(f"sqlite:///{simulated.state / 'hitl.db'}")
    try:
        with store.session() as session:
            requested = session.scalar(
                select(func.count(func.distinct(Prediction.item_id))).where(
                    Prediction.requested_by == "simulation-service"
                )
            )
            decisions = session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "model_decision")
            )
            corrections = session.scalars(select(Correction)).all()
            runs = session.scalars(select(RetrainRun).order_by(RetrainRun.id)).all()
        assert requested == streamed
        assert decisions is not None
        assert decisions >= streamed
        assert len(corrections) == rows[-1]["corrections"]  # every webhook the driver sent, once
        assert {c.source for c in corrections} == {"webhook"}
        assert all(c.action == "created" and c.label for c in corrections)
        # The seed run (in-process, like `hitl up`) and one API-triggered run per round.
        assert runs[0].status == "promoted"
        assert len(runs) == 1 + ROUNDS
        assert all(any(reason.startswith("api:") for reason in r.reasons) for r in runs[1:])
    finally:
        store.close()
    promoted = [r for r in rows[1:] if r["retrain_status"] == "promoted"]
    assert promoted, [r["gate_reason"] for r in rows]
    assert rows[-1]["champion_version"] != rows[0]["champion_version"]
    # The app served the champion that was current when each round's batch arrived: the one the
    # previous round left (round 0 is the seed model's).
    for previous, row in itertools.pairwise(rows):
        assert str(row["serving_version"]).endswith(f":v{previous['champion_version']}"), (previous, row)


def test_a_finished_run_is_skipped_on_rerun(simulated: Simulated) -> None:
    before = simulated.run_file.read_text()
    args = [
        "simulate",
        "--catalog",
        str(simulated.catalog),
        *ARGS,
        "--through-api",
        "--out",
        str(simulated.out),
    ]
    again = CliRunner().invoke(simulated.app, args, obj=simulated.settings)
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output
    assert simulated.run_file.read_text() == before


def test_through_api_bad_input_is_a_cli_error_not_a_crash(simulated: Simulated, tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        simulated.app,
        ["simulate", "--catalog", str(tmp_path / "nope.jsonl"), *ARGS, "--through-api"],
        obj=simulated.settings,
    )
    assert missing.exit_code == 2
    assert "catalog file not found" in missing.output
