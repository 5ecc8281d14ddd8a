"""Outside dev mode, placeholder or short secrets are refused at startup (when settings are read); in dev
mode, they are refused on an address other machines can reach (`AppSettings.check_exposure`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from hitl.settings import LabelStudioSettings, ServingSettings, Settings, load_settings
from serving.settings import is_loopback

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
    with pytest.raises(ValidationError, match=r"serving\.ml_backend_password"):
        Settings(dev_mode=False, labelstudio=labelstudio)
    # Without its auth the password is moot, and an open ML backend is refused outside dev mode.
    with pytest.raises(ValidationError, match=r"ml_backend_auth is false") as caught:
        Settings(dev_mode=False, labelstudio=labelstudio, serving=ServingSettings(ml_backend_auth=False))
    assert "ml_backend_password" not in str(caught.value)
    assert Settings(dev_mode=True, serving=ServingSettings(ml_backend_auth=False))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("my-host.corp", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_dev_placeholders_are_refused_on_an_address_other_machines_reach() -> None:
    Settings().check_exposure()  # the default: dev mode on 127.0.0.1
    exposed = Settings(serving=ServingSettings(host="0.0.0.0"))
    with pytest.raises(ValueError, match=r"refusing to serve on '0\.0\.0\.0'.*placeholder") as caught:
        exposed.check_exposure()
    assert "hitl-dev" not in str(caught.value)  # names the fields, never the values
    with pytest.raises(ValueError, match="ml_backend_auth is false"):
        Settings(
            serving=ServingSettings(host="0.0.0.0", ml_backend_auth=False),
            labelstudio=production().labelstudio,
        ).check_exposure()
    # Real secrets may be served anywhere, in dev mode or not.
    real = production()
    real.model_copy(update={"serving": real.serving.model_copy(update={"host": "0.0.0.0"})}).check_exposure()
    dev = Settings(labelstudio=real.labelstudio, serving=real.serving.model_copy(update={"host": "0.0.0.0"}))
    dev.check_exposure()


def test_env_switches_dev_mode_off_and_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_DEV_MODE", "false")
    with pytest.raises(ValidationError, match="dev_mode is false"):
        load_settings(None, state_dir=tmp_path)
