"""`hitl.up_state`: the files `hitl up` and the demo keep their state in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hitl import cli_up
from hitl.settings import Settings
from hitl.up_state import StackBusyError, read_json, stack_lock, up_dir_of, write_json


def test_state_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream.json"
    write_json(path, {"streamed": 120, "total": 7700})
    assert read_json(path) == {"streamed": 120, "total": 7700}

    # The write dies half way (a kill, a full disk): the previous state is still there, whole.
    def dies(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", dies)  # after the new text went to the temporary file
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"streamed": 125, "total": 7700})
    monkeypatch.undo()
    assert read_json(path) == {"streamed": 120, "total": 7700}
    assert [p.name for p in tmp_path.iterdir()] == ["stream.json"]  # no temporary file left behind


def test_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{}")
    path.chmod(0o644)  # an older, wider file is replaced, not kept
    write_json(path, {"service": "hitl_x"}, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_json(path) == {"service": "hitl_x"}


def test_one_up_or_down_at_a_time(tmp_path: Path) -> None:
    message = "another `hitl up` or `hitl down` is running"
    with stack_lock(tmp_path), pytest.raises(StackBusyError, match=message), stack_lock(tmp_path):
        pass
    with stack_lock(tmp_path):  # released when the first one ended
        pass


def test_a_second_up_or_down_is_refused_with_a_message(tmp_path: Path) -> None:
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("up")(cli_up.up)
    app.command("down")(cli_up.down)
    settings = Settings(state_dir=tmp_path / "state")
    with stack_lock(up_dir_of(settings)):
        for command in ("up", "down"):
            result = CliRunner().invoke(app, [command], obj=settings)
            assert result.exit_code == 1, result.output
            assert "another `hitl up` or `hitl down` is running" in " ".join(result.output.split())
