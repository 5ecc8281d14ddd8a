"""The Label Studio section of the settings: a plain pydantic model, composed into the root by `hitl`.

`labeling` never imports `hitl`; its functions take this section.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator


class LabelStudioSettings(BaseModel):
    url: str | None = Field(None, description="An external Label Studio; unset = the project's local one")
    version: str = "1.23.2"
    sdk_version: str = "2.1.2"
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=1, le=65535)
    venv: Path = Path(".venv-labelstudio")
    username: str = "admin@hitl.local"
    password: SecretStr = SecretStr("hitl-dev-password")
    token: SecretStr = SecretStr("hitl-dev-token-0123456789")
    reviewer_username: str = "reviewer@hitl.local"
    webhook_secret: SecretStr = SecretStr("hitl-dev-webhook-secret")
    project_title: str = "Product categories"
    start_timeout_s: float = Field(240.0, gt=0)
    webhook_timeout_s: float = Field(
        3.0, gt=0, description="Label Studio's WEBHOOK_TIMEOUT (it never retries)"
    )
    push_batch_size: int = Field(200, ge=1, le=5000)
    sync_interval_s: float = Field(300.0, ge=0, description="periodic reconciliation; 0 = off")
    request_timeout_s: float = Field(30.0, gt=0)
    senior_reviewers: list[str] = Field(
        default_factory=lambda: ["admin@hitl.local"],
        description="Label Studio user emails whose annotation is the label of a high-stakes item (high "
        "value, always-review category or brand); anyone else's is stored as a proposal and the task stays "
        "open for them. Empty = no tiers: every reviewer's annotation is the label",
    )
    reviewer_refresh_s: float = Field(
        60.0, gt=0, description="how long the user id -> email directory of Label Studio is trusted"
    )

    @field_validator("senior_reviewers")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().lower() for v in value]
        bad = [v for v in cleaned if "@" not in v or any(c.isspace() for c in v)]
        if bad:
            raise ValueError(f"{len(bad)} senior reviewer(s) are not email addresses: {bad[:3]}")
        return sorted(set(cleaned))

    @property
    def base_url(self) -> str:
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/")
