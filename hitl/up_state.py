"""What `hitl up` leaves under ``<state_dir>/up`` and every demo command reads: the stack's settings, the
state file (catalog, seed size, project, started processes), the API keys, and the seed/stream split."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hitl.settings import Settings
from learner.files import replaced_atomically

STATE_FILE = "state.json"
KEYS_FILE = "keys.json"
LOCK_FILE = "up.lock"


class StackBusyError(RuntimeError):
    """Another `hitl up` or `hitl down` is working on the same state directory."""


@contextmanager
def stack_lock(up: Path) -> Iterator[None]:
    """Hold the state directory's lock for one `hitl up` / `hitl down`. Two at once would both start
    services on the same ports and overwrite each other's PID files, leaving processes nothing stops.
    The lock is released when the command ends (and by the OS if it dies); services it started keep
    running, since child processes do not inherit it."""
    fd = os.open(up / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackBusyError(
                f"another `hitl up` or `hitl down` is running on {up.parent}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def up_dir_of(settings: Settings) -> Path:
    path = (settings.state_dir / "up").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def mlflow_url(settings: Settings) -> str:
    return f"http://{settings.mlflow.server_host}:{settings.mlflow.server_port}"


def stack_settings(settings: Settings) -> Settings:
    """The settings every process of the stack shares: tracking through the MLflow server."""
    if settings.mlflow.tracking_uri:
        return settings
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": mlflow_url(settings)})
    return settings.model_copy(update={"mlflow": mlflow, "state_dir": settings.state_dir.resolve()})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any], *, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically (a temporary file in the same folder, then a rename), with
    file `mode`. A kill or a full disk mid-write leaves the old file whole: `read_json` would read a
    truncated one as {}, and the stream would restart at item 0, `hitl down` forget what it started."""
    with replaced_atomically(path, mode=mode) as tmp:
        # Created with `mode`: a key file is never readable by others, not even while it is written.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=2))
            out.flush()
            os.fsync(out.fileno())


def read_state(up: Path) -> dict[str, Any]:
    return read_json(up / STATE_FILE)


def save_state(up: Path, state: dict[str, Any]) -> None:
    write_json(up / STATE_FILE, state)


def split_demo(products: Sequence[Any], seed_size: int) -> tuple[list[Any], list[Any]]:
    """(seed, stream): the first `seed_size` labelled items are the seed; every other item streams."""
    seed = [p for p in products if p.category][:seed_size]
    seed_ids = {p.id for p in seed}
    return seed, [p for p in products if p.id not in seed_ids]
