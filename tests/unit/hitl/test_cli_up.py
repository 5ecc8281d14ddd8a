"""`hitl down` stops what `hitl up` started, and nothing else (`hitl.cli_up._stop_pid`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hitl.cli_up import _recorded, _stop_pid


def _sleeper() -> subprocess.Popen[bytes]:
    """A process sleeping 60 s, returned once it runs its own command line: right after the fork it
    still shows the parent's (pytest's), and a check of its command line would race the exec."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    return proc


def test_a_recorded_pid_is_stopped_only_when_it_is_the_process_we_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "serving.pid"
    other = _sleeper()  # a process whose PID a stale file might name after a reboot
    try:
        pid_file.write_text(f"{other.pid}\n")
        assert _recorded(pid_file, "uvicorn") is None  # its command line is not ours
        assert _stop_pid(pid_file, "uvicorn") is False
        assert other.poll() is None, "an unrelated process was left running"
        assert not pid_file.exists()  # the stale file is cleaned up
    finally:
        other.kill()
        other.wait()

    ours = _sleeper()
    pid_file.write_text(f"{ours.pid}\n")
    assert _recorded(pid_file, "time.sleep") == ours.pid
    assert _stop_pid(pid_file, "time.sleep", grace_s=5) is True
    assert ours.wait(timeout=10) is not None  # stopped (SIGTERM)
    assert not pid_file.exists()


def test_an_unreadable_or_dead_pid_file_names_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "mlflow.pid"
    assert _recorded(pid_file, "mlflow") is None  # missing
    pid_file.write_text("not a pid")
    assert _recorded(pid_file, "mlflow") is None
    gone = _sleeper()
    gone.kill()
    gone.wait()
    pid_file.write_text(str(gone.pid))
    assert _recorded(pid_file, "python") is None


def test_a_stale_pid_file_never_names_a_later_process_that_looks_like_ours(tmp_path: Path) -> None:
    from hitl.cli_up import _record_pid, _started_mark

    pid_file = tmp_path / "serving.pid"
    ours = _sleeper()
    _record_pid(pid_file, ours.pid)
    assert _recorded(pid_file, "time.sleep") == ours.pid
    mark = _started_mark(ours.pid)
    assert mark is not None
    assert mark in pid_file.read_text()
    # The same PID, the same kind of command line, started at another moment (the PID reused after a
    # crash or a reboot): the mark tells it apart, and it is left alone.
    pid_file.write_text(f"{ours.pid} {mark.rsplit(':', 1)[0]}:1\n")
    try:
        assert _recorded(pid_file, "time.sleep") is None
        assert _stop_pid(pid_file, "time.sleep", grace_s=1) is False
        assert ours.poll() is None, "a process up did not start was stopped"
    finally:
        ours.kill()
        ours.wait()


def test_a_finished_stream_is_not_started_again(tmp_path: Path) -> None:
    # `hitl demo stream` with nothing left exits at once, which `_spawn` reads as a failure: a re-run of
    # `make up` after the stream finished failed.
    from hitl.cli_up import _start_stream

    (tmp_path / "stream.json").write_text('{"streamed": 7700, "total": 7700}')
    assert _start_stream(tmp_path, {}, 2.0) is False
    assert not (tmp_path / "stream.pid").exists()
    assert not (tmp_path / "stream.log").exists()
