"""Outside dev mode, placeholder or short secrets are refused at startup (when settings are read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from hitl.settings import LabelStudioSettings, ServingSettings, Settings, load_settings

STRONG = "s3cret-that-is-long-enough-"


def production(**labelstudio: str) -> Settings:
    values = {"password": STRONG + "p", "token": STRONG + "t", "webhook_secret": STRONG + "w"}
    values.update(labelstudio)
    return Settings(
        dev_mode=False,
        labelstudio=LabelStudioSettings(**{k: SecretStr(v) for k, v in values.items()}),
        serving=ServingSettings(ml_backend_password=SecretStr(STRONG + "m")),
    )


def test_dev_mode_accepts_the_shipped_placeholders() -> None:
    assert Settings().dev_mode is True
    assert load_settings(None).dev_mode is True


def test_placeholders_are_refused_naming_every_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(dev_mode=False)
    message = str(caught.value)
    for field in (
        "labelstudio.password",
        "labelstudio.token",
        "labelstudio.webhook_secret",
        "serving.ml_backend_password",
    ):
        assert field in message
    assert "placeholder" in message


def test_real_secrets_pass_and_a_short_one_is_refused_without_being_echoed() -> None:
    assert production().dev_mode is False
    with pytest.raises(ValidationError, match=r"shorter than 16 characters: labelstudio\.token") as caught:
        production(token="tiny-token")
    assert "tiny-token" not in str(caught.value)
    with pytest.raises(ValidationError, match=r"placeholder: labelstudio\.webhook_secret"):
        production(webhook_secret="hitl-dev-webhook-secret")


def test_ml_backend_password_only_matters_when_its_auth_is_on() -> None:
    values = {"password": STRONG + "p", "token": STRONG + "t", "webhook_secret": STRONG + "w"}
    labelstudio = LabelStudioSettings(**{k: SecretStr(v) for k, v in values.items()})
    assert Settings(dev_mode=False, labelstudio=labelstudio, serving=ServingSettings(ml_backend_auth=False))
    with pytest.raises(ValidationError, match=r"serving\.ml_backend_password"):
        Settings(dev_mode=False, labelstudio=labelstudio)


def test_env_switches_dev_mode_off_and_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_DEV_MODE", "false")
    with pytest.raises(ValidationError, match="dev_mode is false"):
        load_settings(None, state_dir=tmp_path)
