from pathlib import Path

import pytest
from pydantic import ValidationError

from hitl.settings import ConfigFileError, load_settings


def test_yaml_is_read_and_env_overrides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("learner:\n  target_accuracy: 0.9\n  seed: 7\nserving:\n  port: 9001\n")
    monkeypatch.setenv("HITL_LEARNER__SEED", "11")
    settings = load_settings(config)
    assert settings.learner.target_accuracy == 0.9
    assert settings.learner.seed == 11  # env beats YAML
    assert settings.serving.port == 9001
    assert settings.learner.delta == 0.05  # untouched default


def test_explicit_override_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_STATE_DIR", str(tmp_path / "from-env"))
    settings = load_settings(None, state_dir=tmp_path / "explicit")
    assert settings.state_dir == tmp_path / "explicit"


def test_repo_default_config_loads() -> None:
    default = Path(__file__).parents[3] / "configs" / "default.yaml"
    settings = load_settings(default)
    assert settings.learner.strategy == "margin"
    assert settings.labelstudio.base_url.startswith("http://127.0.0.1:")


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('learner:\n  seed: 1\n token: "s3cret-value\n', "not valid YAML at line 3"),
        ("- learner\n- serving\n", "expected a mapping of sections"),
        ("just text\n", "got a str"),
    ],
)
def test_a_config_that_is_no_yaml_mapping_is_a_clear_error(tmp_path: Path, text: str, reason: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigFileError, match=reason) as info:
        load_settings(config)
    assert "s3cret" not in str(info.value)  # the file's text is never quoted: it can hold secrets


def test_a_directory_or_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="is a directory"):
        load_settings(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigFileError, match="cannot be read as YAML"):
        load_settings(config)
    config.write_text("")  # an empty file is no override at all
    assert load_settings(config).learner.seed == load_settings(None).learner.seed


def test_an_unparsable_environment_section_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_LEARNER", '{"token": "s3cret-value"')
    with pytest.raises(ConfigFileError, match='field "learner"') as info:
        load_settings(None)
    assert "s3cret" not in str(info.value)


def test_unknown_or_invalid_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("learner:\n  target_accuracy: 1.5\n")
    with pytest.raises(ValidationError, match="target_accuracy") as refused:
        load_settings(config)
    assert f"settings ({config} and HITL_* variables)" in str(refused.value)  # the sources, not a class
    config.write_text("learner:\n  audit:\n    certify_window: -1\n")
    with pytest.raises(ValidationError, match="certify_window"):
        load_settings(config)
    config.write_text("no_such_section: 1\n")
    with pytest.raises(ValidationError, match="no_such_section"):
        load_settings(config)


def test_secrets_do_not_show_in_repr() -> None:
    settings = load_settings(None)
    assert settings.labelstudio.token.get_secret_value() not in repr(settings)
