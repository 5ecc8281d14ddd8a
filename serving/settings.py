"""The serving sections of the settings, and `AppSettings`: every section the serving app reads.

Plain pydantic models; `hitl.settings` adds the sources (YAML, `HITL_*` environment) and composes them
once. `serving` never imports `hitl`.
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from labeling.settings import LabelStudioSettings
from learner.settings import LearnerSettings

# Secrets shorter than this are refused outside dev mode.
MIN_SECRET_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True when `host` (a bind address or name) only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


class MlflowSettings(BaseModel):
    tracking_uri: str | None = Field(None, description="unset = sqlite under the state dir")
    experiment: str = "hitl"
    registered_model: str = "hitl-product-categories"
    # MLflow's HTTP client defaults (120 s, 7 retries with backoff) let one bad call hold a request
    # thread for minutes; an HTTP tracking server answers a sane call in well under a second.
    request_timeout_s: int = Field(10, ge=1, le=600)
    request_retries: int = Field(2, ge=0, le=10)
    server_host: str = Field("127.0.0.1", description="the lean MLflow server `hitl up` starts ...")
    server_port: int = Field(5000, ge=1, le=65535, description="... and its port")


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(None, description="How Label Studio reaches us (webhooks)")
    database_url: str | None = Field(None, description="unset = sqlite under the state dir")
    max_batch_size: int = Field(256, ge=1)
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description="how long a verified API key is trusted without a database lookup; a revocation "
        "through the API applies at once, one through the CLI within this time (0 = every request)",
    )
    max_text_length: int = Field(2000, ge=1)
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="request bodies above this are refused (413) before they are read"
    )
    max_ml_backend_body_bytes: int = Field(
        16_777_216, ge=1024, description="the same for the ML backend, where Label Studio sends task batches"
    )
    max_in_flight: int = Field(
        16,
        ge=0,
        description="predictions worked on at once; beyond it 503 with Retry-After (0 = unbounded)",
    )
    overload_retry_after_s: int = Field(1, ge=1, le=3600, description="the Retry-After of that 503")
    auth_max_failures: int = Field(
        30, ge=0, description="failed key checks per client address and window before 429 (0 = off)"
    )
    auth_failure_window_s: float = Field(60.0, gt=0)
    model_source: Literal["auto", "bundle", "registry", "none"] = Field(
        "auto",
        description="auto = bundle_path when set, else the MLflow registry when its database exists",
    )
    bundle_path: Path | None = Field(None, description="a local model bundle folder")
    model_alias: str = Field("champion", min_length=1)
    model_poll_interval_s: float = Field(30.0, ge=0, description="champion alias / bundle check; 0 = off")
    outbox_enabled: bool = Field(True, description="run the worker that delivers escalations")
    outbox_interval_s: float = Field(5.0, gt=0, description="how often the outbox worker runs")
    outbox_batch_size: int = Field(200, ge=1, le=5000, description="escalations taken per outbox pass")
    embedding_cache: Literal["local", "database"] = Field(
        "local",
        description="where embeddings are cached: local = a SQLite file under the state dir (per machine); "
        "database = a table of the serving database, shared by every replica",
    )
    outbox_claim_s: float = Field(
        120.0,
        gt=0,
        description="an outbox pass holds the escalations it took this long; another replica may take "
        "them after that (when the first died mid-delivery)",
    )
    outbox_base_backoff_s: float = Field(2.0, gt=0, description="first retry delay after a failed push")
    outbox_max_backoff_s: float = Field(300.0, gt=0, description="retry delays double up to this cap")
    ml_backend_auth: bool = Field(True, description="require HTTP basic auth on the ML-backend endpoints")
    ml_backend_user: str = Field("labelstudio", min_length=1)
    ml_backend_password: SecretStr = SecretStr("hitl-dev-ml-backend-password")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class RoutingSettings(BaseModel):
    """The auto-accept / escalate policy applied to every prediction (see `serving.routing`)."""

    high_value_price: float | None = Field(
        1000.0, ge=0, description="items at or above this price are reviewed; null = off"
    )
    always_review_categories: list[str] = Field(
        default_factory=list, description="labels (or label prefixes such as 'Health') always reviewed"
    )
    always_review_brands: list[str] = Field(default_factory=list, description="case-insensitive")
    top_k: int = Field(3, ge=1, le=50)
    novelty_min_similarity: float = Field(
        0.35, ge=-1, le=1, description="cosine to the nearest class centroid below this = out of distribution"
    )


class RetrainSettings(BaseModel):
    """The retraining loop (`serving.retrain`)."""

    enabled: bool = Field(True, description="run the retrain worker in the serving app")
    retrain_every_n_corrections: int = Field(
        25, ge=0, description="new usable corrections that trigger a retrain; 0 = only explicit triggers"
    )
    poll_interval_s: float = Field(1.0, gt=0, description="how often the worker counts new corrections")
    retry_failed_after_s: float = Field(
        300.0,
        gt=0,
        description="a failed run's corrections trigger a new run once this long has passed since it failed",
    )
    min_labels: int = Field(20, ge=2, description="fewer training labels than this fails the run")
    accuracy_tolerance: float = Field(
        0.01, ge=0, lt=1, description="gate margin: refused only if significantly worse by more than this"
    )
    coverage_tolerance: float = Field(
        0.02, ge=0, lt=1, description="... and the same margin for certified coverage"
    )
    gate_alpha: float = Field(
        0.05, gt=0, lt=1, description="level of the gate's paired tests (split over accuracy and coverage)"
    )
    auto_resolve_on_promotion: bool = Field(
        True, description="after a promotion, auto-resolve open escalations now above their threshold"
    )
    challenger_alias: str = Field("challenger", min_length=1)
    escalation_log_interval_s: float = Field(
        300.0, ge=0, description="how often escalation rates are logged to MLflow; 0 = only after retrains"
    )
    ngram_memo_texts: int = Field(
        100_000,
        ge=0,
        description="texts whose hashed n-gram rows the worker keeps between retrains (~1.6 kB each)",
    )


class DashboardSettings(BaseModel):
    """The product owners' dashboard, its KPIs (`serving.kpis`) and `hitl report`."""

    human_cost_per_review: float = Field(0.5, ge=0, description="cost of one human review (currency units)")
    compute_cost_per_item: float = Field(0.0005, ge=0, description="compute cost of one prediction")
    currency: str = Field("USD", min_length=1, max_length=8)
    window_s: int = Field(
        3600,
        ge=60,
        description="the time window of every escalation-rate figure (the dashboard's charts over time, "
        "/v1/metrics/escalation, the rates logged to MLflow) and of the throughput figures",
    )
    price_bands: list[float] = Field(
        default_factory=lambda: [10.0, 50.0, 200.0, 1000.0],
        description="ascending upper bounds of the price bands used as segments",
    )
    significance: float = Field(
        0.05, gt=0, lt=1, description="family-wise level of the bias flags (Holm-corrected Fisher tests)"
    )
    min_segment_size: int = Field(10, ge=1, description="segments with fewer reviewed items are not tested")
    top_brands: int = Field(20, ge=1, description="brands shown as segments (the most frequent)")
    session_ttl_s: int = Field(8 * 3600, ge=60, description="how long a dashboard login lasts")
    secure_cookie: bool = Field(False, description="mark the session cookie Secure (serve over HTTPS)")
    mlflow_ui_url: str | None = Field(
        None, description="MLflow UI for run links; unset = http://<mlflow.server_host>:<mlflow.server_port>"
    )

    @field_validator("price_bands")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)) or any(v <= 0 for v in value):
            raise ValueError("price_bands must be positive and strictly ascending")
        return value


class AppSettings(BaseModel):
    """Every section the serving app and its parts read, and where local state lives.

    A plain model: `hitl.settings.Settings` extends it with where the values come from (YAML, `HITL_*`
    environment) and with the sections only the CLI reads; serving code takes an `AppSettings` or, better,
    the one section it needs."""

    dev_mode: bool = True
    state_dir: Path = Path(".hitl")
    learner: LearnerSettings = LearnerSettings()
    labelstudio: LabelStudioSettings = LabelStudioSettings()
    mlflow: MlflowSettings = MlflowSettings()
    serving: ServingSettings = ServingSettings()
    routing: RoutingSettings = RoutingSettings()
    retrain: RetrainSettings = RetrainSettings()
    dashboard: DashboardSettings = DashboardSettings()

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def unsafe_secrets(self) -> list[str]:
        """What makes this configuration unsafe to expose: secrets still at their shipped (public)
        placeholder or too short, and the ML backend left without authentication. Empty = safe."""
        checked: list[tuple[str, BaseModel, str]] = [
            ("labelstudio.password", self.labelstudio, "password"),
            ("labelstudio.token", self.labelstudio, "token"),
            ("labelstudio.webhook_secret", self.labelstudio, "webhook_secret"),
        ]
        if self.serving.ml_backend_auth:
            checked.append(("serving.ml_backend_password", self.serving, "ml_backend_password"))
        placeholder: list[str] = []
        short: list[str] = []
        for name, section, field in checked:
            value: SecretStr = getattr(section, field)
            default = type(section).model_fields[field].default
            if isinstance(default, SecretStr) and value.get_secret_value() == default.get_secret_value():
                placeholder.append(name)
            elif len(value.get_secret_value()) < MIN_SECRET_LENGTH:
                short.append(name)
        problems: list[str] = []
        if placeholder:
            problems.append(f"still the shipped placeholder: {', '.join(placeholder)}")
        if short:
            problems.append(f"shorter than {MIN_SECRET_LENGTH} characters: {', '.join(short)}")
        if not self.serving.ml_backend_auth:
            problems.append("serving.ml_backend_auth is false (anyone could start retrains)")
        return problems

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> AppSettings:
        """Outside dev mode, every secret must be set, not to its shipped (public) default, and the
        ML backend must require authentication."""
        problems = [] if self.dev_mode else self.unsafe_secrets()
        if problems:
            raise ValueError(
                "dev_mode is false but the configuration is unsafe ("
                + "; ".join(problems)
                + "); set the secrets (e.g. HITL_LABELSTUDIO__TOKEN) or set dev_mode: true for local use"
            )
        return self

    def check_exposure(self) -> None:
        """Refuse to serve beyond this machine with dev mode's public placeholder secrets.

        Dev mode accepts the shipped secrets, which anyone can read in this repository: on a
        non-loopback address, anyone who reaches the port could post forged corrections (training
        labels) to the webhook or start retrains through the ML backend.

        Raises
        ------
        ValueError
            naming the address and what is unsafe.
        """
        if is_loopback(self.serving.host):
            return
        problems = self.unsafe_secrets()
        if problems:
            raise ValueError(
                f"refusing to serve on {self.serving.host!r}, which is reachable from other machines, "
                f"with an unsafe configuration ({'; '.join(problems)}); set the secrets and "
                "dev_mode: false, or serve on 127.0.0.1"
            )

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def database_url(self) -> str:
        return self.serving.database_url or f"sqlite:///{(self.state_dir / 'hitl.db').resolve()}"
