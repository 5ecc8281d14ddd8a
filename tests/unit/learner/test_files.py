from __future__ import annotations

import stat
from pathlib import Path

import pytest

from learner.files import replaced_atomically


def test_a_finished_write_replaces_the_file_in_one_rename(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with replaced_atomically(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the block ends
        assert tmp.parent == target.parent  # same folder: the rename cannot cross file systems
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "catalog.jsonl"
    target.write_text("whole")

    def write_half() -> None:
        with replaced_atomically(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_half()
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.jsonl"]


def test_mode_is_set_before_the_file_appears(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    with replaced_atomically(target, mode=0o600) as tmp:
        tmp.write_text("{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
