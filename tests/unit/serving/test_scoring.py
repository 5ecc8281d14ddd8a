"""`serving.scoring`: what the Ray scoring actors are given."""

from __future__ import annotations

import pickle

from pydantic import SecretStr

from hitl.settings import LabelStudioSettings, MlflowSettings, ServingSettings, Settings
from serving.scoring import settings_for_actors


def test_scoring_actors_get_no_credentials_but_what_scoring_needs() -> None:
    secrets = {
        "ls-password-0123456789",
        "ls-token-0123456789abcdef",
        "webhook-secret-0123456789",
        "ml-backend-password-0123",
        "mlflow-user:mlflow-pass",
    }
    settings = Settings(
        labelstudio=LabelStudioSettings(
            password=SecretStr("ls-password-0123456789"),
            token=SecretStr("ls-token-0123456789abcdef"),
            webhook_secret=SecretStr("webhook-secret-0123456789"),
        ),
        mlflow=MlflowSettings(tracking_uri="https://mlflow-user:mlflow-pass@mlflow.corp"),
        serving=ServingSettings(
            ml_backend_password=SecretStr("ml-backend-password-0123"), database_url="sqlite:///scores.db"
        ),
    )
    given = settings_for_actors(settings)

    # What Ray would pickle and ship, secrets revealed as a pickle would hold them.
    shipped = pickle.dumps(given).decode("latin-1")
    revealed = repr(
        [
            given.labelstudio.password.get_secret_value(),
            given.labelstudio.token.get_secret_value(),
            given.labelstudio.webhook_secret.get_secret_value(),
            given.serving.ml_backend_password.get_secret_value(),
            given.mlflow.tracking_uri,
        ]
    )
    assert not any(secret in shipped or secret in revealed for secret in secrets)
    # Scoring still has what it uses: the learner, routing, the cache and the database.
    assert given.learner == settings.learner
    assert given.routing == settings.routing
    assert given.serving.database_url == "sqlite:///scores.db"
    assert given.cache_dir == settings.cache_dir
