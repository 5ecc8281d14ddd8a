"""The serving benchmark: its response checks, and one tiny end-to-end run (server process + raw client)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import bench_serving


def answer(ids: list[object], status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps({"predictions": [{"prediction_id": i} for i in ids]}).encode()


def test_check_counts_every_kind_of_bad_answer() -> None:
    answers = [
        answer([1, 2]),
        answer([3]),  # an item missing
        answer([4, None]),  # no id
        answer([5, "6"]),  # not an integer
        (503, b'{"detail": "no model"}'),
    ]
    assert bench_serving._check(answers, 2) == 4
    assert bench_serving._check([answer([7, 8])], 2) == 0


def test_bad_sizes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_serving.main(["--n", "8"])
    assert exit_info.value.code == 2
    assert "--n >= 32" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_run_writes_results_and_loses_nothing(tmp_path: Path) -> None:
    result = bench_serving.main(
        [
            "--n",
            "64",
            "--single-requests",
            "24",
            "--clients",
            "4",
            "--sweep-seconds",
            "0.5",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "bench_serving.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert (tmp_path / "bench_serving.png").stat().st_size > 0
    assert result["batch32_requests"] == 2
    assert result["single_cached_requests"] == 24
    assert result["batch32_errors"] == result["single_cached_errors"] == 0
    sweep = result["concurrency_sweep"]
    assert [p["clients"] for p in sweep["points"]] == [p["clients"] for p in sweep["unbounded_points"]]
    assert [p["clients"] for p in sweep["points"]] == [8, 50, 200]
    assert sweep["unbounded_points"][-1]["refused"] == 0  # the comparison server has no bound
    served = sum(p["served"] for p in sweep["points"] + sweep["unbounded_points"])
    # warm-up (32) + 2 batches of 32 + 24 singles + the sweep's, all committed before the servers exited
    assert result["predictions_stored"] == result["predictions_expected"] == 32 + 64 + 24 + served
    assert result["targets_met"]["no_errors_nothing_lost"] is True
    assert result["raw_encoder_items_per_s"] > 0
    assert result["raw_encoder_alone_items_per_s"] > 0
    assert result["batch32_vs_raw_encoder"] == pytest.approx(
        result["batch32_predictions_per_s"] / result["raw_encoder_items_per_s"]
    )
    assert result["server_peak_rss_mb"] > 100  # the server process (model loaded), not this one
    assert set(result["targets_met"]) == {
        "batch32_vs_raw_encoder",
        "single_cached_p99_ms",
        "concurrency_sweep",
        "no_errors_nothing_lost",
    }
