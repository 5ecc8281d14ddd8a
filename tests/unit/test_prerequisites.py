"""`tests.prerequisites`: a missing program skips a test locally and fails it under CI."""

from __future__ import annotations

import pytest

from tests.prerequisites import unavailable


@pytest.mark.parametrize("ci", ["", "0", "false"])
def test_a_missing_program_skips_locally(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="initdb not found"):
        unavailable("initdb not found")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_a_missing_program_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"initdb not found.*CI runs every test"):
        unavailable("initdb not found")
