"""`hitl.up_state`: the files `hitl up` and the demo keep their state in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hitl.up_state import read_json, write_json


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
