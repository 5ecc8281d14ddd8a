"""The demo's curve (issue #14 item 6): the stream's escalation rate per minute while a merchandiser works.

Run it after a demo session, against the stack `make up` started:

    make up
    .venv/bin/hitl demo review --minutes 10
    .venv/bin/python -m experiments.demo_curve [--screenshot]

It reads what the demo logged under ``<state_dir>/up``: ``stream.jsonl`` (each batch the stream sent to
``/v1/predict``: time, items, escalated, which model version answered) and ``review.jsonl`` (each task
`hitl demo review` worked, in Label Studio's queue order), and the retrain runs from the serving API
(``GET /v1/retrain``, the ml_engineer key `make up` wrote). Windows start at the first review. It writes
``demo_curve.json`` (keys: ``promotions``, ``escalation_first_window``, ``escalation_last_window``,
``windows``, ``runs``, ...) and ``demo_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from experiments.figures import save_with_command

COMMAND = ".venv/bin/hitl demo review --minutes 10 && .venv/bin/python -m experiments.demo_curve"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make up` and `hitl demo review` first")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written when we read
    return out


def windows(stream: list[dict[str, Any]], start: float, end: float, width: float) -> list[dict[str, Any]]:
    """The stream's batches in [start, end) cut into windows of `width` seconds."""
    count = max(1, int((end - start) // width))
    out: list[dict[str, Any]] = []
    for i in range(count):
        lo, hi = start + i * width, start + (i + 1) * width
        batches = [b for b in stream if lo <= b["t"] < hi]
        items = sum(int(b["n"]) for b in batches)
        escalated = sum(int(b["escalated"]) for b in batches)
        versions: Counter[str] = Counter()
        for b in batches:
            versions.update(b.get("versions", {}))
        out.append(
            {
                "start_s": round(lo - start, 1),
                "items": items,
                "escalated": escalated,
                "rate": escalated / items if items else None,
                "versions": dict(versions),
            }
        )
    return out


def _runs(api: str, key: str | None) -> list[dict[str, Any]]:
    if key is None:
        return []
    answer = httpx.get(
        f"{api}/v1/retrain", params={"limit": 200}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    answer.raise_for_status()
    runs: list[dict[str, Any]] = answer.json()
    return runs


def _epoch(stamp: str | None) -> float | None:
    from datetime import UTC, datetime

    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    points = [(w["start_s"] / 60, w["rate"]) for w in result["windows"] if w["rate"] is not None]
    ax.plot([m + 0.5 for m, _ in points], [r for _, r in points], marker="o", label="escalation rate")
    for run in result["runs"]:
        if run["promoted"] and run["at_min"] is not None and run["at_min"] >= 0:
            ax.axvline(run["at_min"], color="tab:green", alpha=0.35, linewidth=1)
    ax.plot([], [], color="tab:green", alpha=0.5, label="a version promoted")
    ax.set_xlabel("minutes since the first review")
    ax.set_ylabel("share of new items escalated")
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"make up + hitl demo review: {result['reviews']} reviews, {result['promotions']} promotions "
        f"in {result['minutes']:.0f} min"
    )
    ax.legend(loc="upper right")
    save_with_command(fig, path, COMMAND)


def dashboard_screenshot(api: str, key: str, path: Path) -> None:
    """Log into the dashboard with `key` in headless Chromium (Debian's, as the browser tests use) and
    save the rendered page."""
    import time

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(f"{api}/login")
        driver.find_element(By.ID, "api_key").send_keys(key)
        driver.find_element(By.ID, "login-submit").click()
        deadline = time.monotonic() + 30
        while driver.execute_script("return document.body && document.body.dataset.state") != "ready":
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard did not render within 30 s")
            time.sleep(0.2)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("HITL_STATE_DIR", ".hitl")))
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the serving API `make up` started")
    parser.add_argument("--window", type=float, default=60.0, help="window width in seconds")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/demo"))
    parser.add_argument(
        "--screenshot",
        action="store_true",
        help="also save the dashboard as dashboard.png (headless Chromium)",
    )
    args = parser.parse_args(argv)
    if args.window <= 0:
        parser.error(f"--window must be > 0 seconds, got {args.window}")

    up = args.state_dir / "up"
    stream, reviews = _lines(up / "stream.jsonl"), _lines(up / "review.jsonl")
    if not reviews:
        raise SystemExit(f"{up / 'review.jsonl'} has no reviews: run `hitl demo review` first")
    start, end = reviews[0]["t"], reviews[-1]["t"]
    cut = windows(stream, start, end, args.window)
    keys = json.loads((up / "keys.json").read_text()) if (up / "keys.json").is_file() else {}
    runs = []
    for run in sorted(_runs(args.api, keys.get("ml_engineer")), key=lambda r: r["id"]):
        finished = _epoch(run.get("finished_at"))
        at_min = None if finished is None else round((finished - start) / 60, 2)
        runs.append(
            {k: run.get(k) for k in ("id", "status", "version", "promoted", "n_labels", "reasons")}
            | {"at_min": at_min}
        )
    during = [r for r in runs if r["at_min"] is not None and 0 <= r["at_min"] <= (end - start) / 60]
    labelled = [r for r in reviews if r.get("label")]
    rates = [w["rate"] for w in cut if w["rate"] is not None]
    result = {
        "command": COMMAND,
        "cpu_count": os.cpu_count(),
        "minutes": (end - start) / 60,
        "window_s": args.window,
        "reviews": len(labelled),
        "skipped": sum(1 for r in reviews if not r.get("label")),
        "one_click_share": sum(bool(r.get("one_click")) for r in labelled) / max(len(labelled), 1),
        "retrains": len(during),
        "promotions": sum(bool(r["promoted"]) for r in during),
        "escalation_first_window": rates[0] if rates else None,
        "escalation_last_window": rates[-1] if rates else None,
        "escalation_min_window": min(rates) if rates else None,
        "windows": cut,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_curve.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "demo_curve.png")
    if args.screenshot and keys.get("product_owner"):
        dashboard_screenshot(args.api, keys["product_owner"], args.out / "dashboard.png")
    first, last = result["escalation_first_window"], result["escalation_last_window"]
    print(
        f"{result['reviews']} reviews in {result['minutes']:.1f} min; {result['promotions']} promotions of "
        f"{result['retrains']} retrains; escalation first window {first}, last window {last}; "
        f"wrote {args.out / 'demo_curve.json'} and .png"
    )


if __name__ == "__main__":
    main()
