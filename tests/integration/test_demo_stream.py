"""`hitl demo stream` against the real serving API (`hitl serve` on a small real bundle).

The stream sends the catalog's items after the seed to `/v1/predict` in steady batches, resumes where
a previous run stopped (nothing is predicted twice, nothing skipped), and logs each batch's decisions.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from labeling.server import free_port
from learner.data import Product, write_catalog
from serving.keys import create_key
from serving.store import Prediction, Store
from tests.integration.conftest import HITL, REPO, cli_env, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED, STREAM, ALREADY_SENT = 10, 24, 6


@dataclass
class Stack:
    env: dict[str, str]
    store: Store
    up: Path
    products: list[Product]


@contextmanager
def served(small_bundle_dir: Path, tmp_path: Path, *, key: str | None = None) -> Iterator[Stack]:
    """`hitl serve` on the small bundle, with the files `hitl up` leaves for the stream (a catalog of
    SEED + STREAM items, a run that stopped after ALREADY_SENT, the service key: a real one by default)."""
    state = tmp_path / "state"
    up = state / "up"
    up.mkdir(parents=True)
    products = [
        Product(id=f"s-{i:03d}", title=f"Trail running shoe model {i}", category=["Sports", "Running"])
        for i in range(SEED + STREAM)
    ]
    write_catalog(products, up / "catalog.jsonl")
    (up / "state.json").write_text(json.dumps({"catalog": str(up / "catalog.jsonl"), "seed_size": SEED}))
    (up / "stream.json").write_text(json.dumps({"streamed": ALREADY_SENT}))  # a run that stopped
    store = Store(f"sqlite:///{state / 'hitl.db'}")
    store.create_all()
    service = key or create_key(store, "demo-stream", "service")[1]
    (up / "keys.json").write_text(json.dumps({"service": service}))
    port = free_port()
    env = cli_env(
        state,
        HITL_SERVING__PORT=str(port),
        HITL_LABELSTUDIO__SYNC_INTERVAL_S="0",  # no Label Studio here
        HITL_SERVING__OUTBOX_ENABLED="false",
        HITL_DEMO__STREAM_INTERVAL_S="0.5",
    )
    server = subprocess.Popen(
        [str(HITL), "serve", "--bundle", str(small_bundle_dir), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(server, f"http://127.0.0.1:{port}")
        yield Stack(env, store, up, products)
    finally:
        server.terminate()
        server.communicate(timeout=60)
        store.close()


def _stream(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HITL), "demo", "stream", "--rate", "10"],  # 5 items every 0.5 s
        cwd=REPO,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_stream_resumes_where_it_stopped_and_logs_each_batch(
    small_bundle_dir: Path, tmp_path: Path
) -> None:
    with served(small_bundle_dir, tmp_path) as stack:
        done = _stream(stack)
        with stack.store.session() as session:
            predicted = [
                row[0] for row in session.execute(select(Prediction.item_id).order_by(Prediction.id))
            ]
    up, products = stack.up, stack.products

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"streaming {STREAM - ALREADY_SENT} of {STREAM} items" in done.stdout
    expected = [p.id for p in products[SEED + ALREADY_SENT :]]
    assert predicted == expected, "each item after the stopped run's last, once, in catalog order"
    batches = [json.loads(line) for line in (up / "stream.jsonl").read_text().splitlines()]
    assert [b["n"] for b in batches] == [5, 5, 5, 3]
    assert all(0 <= b["escalated"] <= b["n"] and sum(b["versions"].values()) == b["n"] for b in batches)
    assert json.loads((up / "stream.json").read_text()) == {"streamed": STREAM, "total": STREAM}
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(batches)]
    # 3 intervals of 0.5 s; a burst would send them all within the ~0.1 s each request takes.
    assert sum(gaps) >= 1.0, f"a steady rate, not a burst: {gaps}"


def test_a_refused_key_stops_the_stream_at_once_with_a_reason(small_bundle_dir: Path, tmp_path: Path) -> None:
    with served(small_bundle_dir, tmp_path, key="hitl_" + "not-a-key" * 5) as stack:
        done = _stream(stack)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused the stream's service key (HTTP 401)" in " ".join(done.stderr.split())
    assert "retrying" not in done.stdout  # no retry can fix it
    assert json.loads((stack.up / "stream.json").read_text()) == {"streamed": ALREADY_SENT}
