"""One place that reads configuration: `configs/*.yaml`, then `HITL_*` environment overrides.

Each package owns its section (`learner.settings`, `labeling.settings`, `serving.settings`); `Settings`
composes them with the sections only the CLI reads (`demo`), and adds the sources. `load_settings()` is
called once by an entry point (CLI, app factory, test fixture) and the result is passed down; nothing
here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from labeling.settings import LabelStudioSettings
from learner.settings import AuditSettings, FineTuneSettings, HeadSettings, LearnerSettings
from serving.settings import (
    AppSettings,
    DashboardSettings,
    MlflowSettings,
    RetrainSettings,
    RoutingSettings,
    ServingSettings,
)

__all__ = [  # the composed view: each section is defined in its package
    "AppSettings",
    "AuditSettings",
    "DashboardSettings",
    "DemoSettings",
    "FineTuneSettings",
    "HeadSettings",
    "LabelStudioSettings",
    "LearnerSettings",
    "MlflowSettings",
    "RetrainSettings",
    "RoutingSettings",
    "ServingSettings",
    "Settings",
    "load_settings",
]

DEFAULT_CONFIG = Path("configs/default.yaml")
CONFIG_ENV_VAR = "HITL_CONFIG"


class DemoSettings(BaseModel):
    """What `hitl up` starts from and feeds in: a small seed, then a steady stream of new items."""

    seed_size: int = Field(
        300,
        ge=10,
        description="labelled catalog items the first model is trained on (a quarter of them audit it), "
        "a team's first few hundred labels",
    )
    catalog_size: int = Field(
        8000, ge=50, description="items in the synthetic demo catalog (the seed, then the stream)"
    )
    stream_items_per_s: float = Field(
        2.0, gt=0, le=1000, description="rate of new catalog items sent to /v1/predict after the seed"
    )
    stream_interval_s: float = Field(
        5.0, gt=0, le=3600, description="the stream posts one batch this often (rate x interval items)"
    )


class Settings(AppSettings, BaseSettings):
    """All configuration. Env: `HITL_<FIELD>`, nested with `__` (e.g. `HITL_LEARNER__DEVICE=cpu`)."""

    model_config = SettingsConfigDict(
        env_prefix="HITL_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=None,
        hide_input_in_errors=True,  # validation errors must not print the (secret-bearing) input
    )

    demo: DemoSettings = DemoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments > environment > YAML file > defaults.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls), file_secret_settings)


class ConfigFileError(ValueError):
    """The configuration cannot be read: its file is missing or is no YAML mapping, or an environment
    override cannot be parsed."""


def _check_yaml(path: Path) -> None:
    """ConfigFileError unless `path` holds a YAML mapping (or nothing). The message names the line
    and the problem, never the text around it: a config file can hold secrets."""
    try:
        with path.open(encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        raise ConfigFileError(f"{path}: not valid YAML at {where}: {exc.problem or exc.context}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: cannot be read as YAML ({type(exc).__name__})") from None
    if document is not None and not isinstance(document, dict):
        raise ConfigFileError(
            f"{path}: expected a mapping of sections (learner:, serving:, ...) at the top, "
            f"got a {type(document).__name__}"
        )


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Read `config` (else `$HITL_CONFIG`, else `configs/default.yaml` when present), then env overrides."""
    path: Path | None
    if config is not None:
        path = Path(config)
        if path.is_dir():
            raise ConfigFileError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigFileError(f"config file not found: {path}")
    elif os.environ.get(CONFIG_ENV_VAR):
        path = Path(os.environ[CONFIG_ENV_VAR])
        if not path.is_file():
            raise ConfigFileError(f"{CONFIG_ENV_VAR} points to a missing file: {path}")
    else:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None

    if path is not None:
        _check_yaml(path)

    class _FromFile(Settings):
        # The title names the sources in validation errors (instead of this class's name).
        model_config = SettingsConfigDict(
            yaml_file=path,
            title=f"settings ({path} and HITL_* variables)" if path else "settings (HITL_* variables)",
        )

    try:
        from_sources = _FromFile(**overrides)
    except SettingsError as exc:  # an environment value that is not JSON where a section is expected
        raise ConfigFileError(str(exc)) from None
    return Settings.model_validate(from_sources.model_dump())
