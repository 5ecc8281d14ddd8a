from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hitl import cli_labelstudio
from hitl.settings import LabelStudioSettings, Settings
from labeling.exceptions import LabelingError
from labeling.server import free_port


def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path, labelstudio=LabelStudioSettings(port=free_port(), venv=tmp_path / "v")
    )


def test_status_exits_1_when_not_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_labelstudio.app, ["status"], obj=settings(tmp_path))
    assert result.exit_code == 1
    assert "not running" in result.output


def test_bootstrap_with_a_missing_taxonomy_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_labelstudio.app, ["bootstrap", "--taxonomy", str(tmp_path / "nope.txt")], obj=settings(tmp_path)
    )
    assert result.exit_code == 1
    assert "taxonomy file not found" in result.output
    assert "Traceback" not in result.output


def test_load_taxonomy_formats(tmp_path: Path) -> None:
    lines = tmp_path / "t.txt"
    lines.write_text("# comment\nHome & Kitchen > Cookware\n\nSports > Running\n")
    as_json = tmp_path / "t.json"
    as_json.write_text('[["Home & Kitchen", "Cookware"], "Sports > Running"]')
    assert cli_labelstudio.load_taxonomy(lines) == cli_labelstudio.load_taxonomy(as_json)
    bad = tmp_path / "t.yaml"
    bad.write_text("a: b\n")
    with pytest.raises(LabelingError, match="expected a list"):
        cli_labelstudio.load_taxonomy(bad)


@pytest.mark.parametrize(
    ("name", "text"),
    [("t.json", '["Sports > Running", oops]'), ("t.yaml", "- a\n - b: [\n"), ("t.txt", b"\xff\xfe")],
)
def test_a_taxonomy_file_its_parser_cannot_read_is_a_labeling_error(
    tmp_path: Path, name: str, text: str | bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(LabelingError, match="not readable as"):
        cli_labelstudio.load_taxonomy(path)


def test_the_external_label_studio_url_is_said_without_its_password(tmp_path: Path) -> None:
    conf = Settings(
        state_dir=tmp_path, labelstudio=LabelStudioSettings(url="https://ops:s3cret@ls.example.com")
    )
    result = CliRunner().invoke(cli_labelstudio.app, ["start"], obj=conf)
    assert result.exit_code == 0, result.output
    assert "ls.example.com" in result.output
    assert "s3cret" not in result.output


def test_status_lists_the_tasks_waiting_for_a_senior_without_creating_a_database(tmp_path: Path) -> None:
    from hitl.cli_labelstudio import _held_for_senior
    from hitl.settings import ServingSettings
    from labeling.config import Taxonomy
    from serving.store import SeniorHold, Store

    conf = settings(tmp_path).model_copy(
        update={"serving": ServingSettings(database_url=f"sqlite:///{tmp_path / 'k.db'}")}
    )
    assert _held_for_senior(conf) == []
    assert not (tmp_path / "k.db").exists(), "a status creates no database"
    store = Store(conf.database_url)
    store.create_all()
    store.save_project(3, conf.labelstudio.project_title, None, Taxonomy.from_paths(["A > x"]))
    store.record_hold(3, SeniorHold(task_id=40, item_id="sku-x", hold=True), overlap=2)
    store.record_hold(3, SeniorHold(task_id=41, item_id="sku-y", hold=True), overlap=2)
    store.record_hold(3, SeniorHold(task_id=41, item_id="sku-y", hold=False), overlap=1)
    store.close()
    assert _held_for_senior(conf) == [40]
