"""Dependencies shared by routers (`Annotated` aliases over what the lifespan put on `app.state`).

The `get_*` helpers are plain functions (some handlers call them directly); the dependencies wrap them
in `async` functions on purpose: a plain `def` dependency costs a threadpool round trip per request.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Query, Request, Response
from pydantic import AfterValidator

from learner.data import check_text
from serving.model import ModelHolder
from serving.prometheus import ServingMetrics
from serving.settings import AppSettings
from serving.store import Store


def get_store(request: Request) -> Store:
    return cast(Store, request.app.state.store)


def get_settings(request: Request) -> AppSettings:
    return cast(AppSettings, request.app.state.settings)


def get_model_holder(request: Request) -> ModelHolder:
    return cast(ModelHolder, request.app.state.model)


def get_metrics(request: Request) -> ServingMetrics:
    return cast(ServingMetrics, request.app.state.metrics)


async def _store(request: Request) -> Store:
    return get_store(request)


async def _settings(request: Request) -> AppSettings:
    return get_settings(request)


async def _model_holder(request: Request) -> ModelHolder:
    return get_model_holder(request)


async def _metrics(request: Request) -> ServingMetrics:
    return get_metrics(request)


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[AppSettings, Depends(_settings)]
ModelHolderDep = Annotated[ModelHolder, Depends(_model_holder)]
MetricsDep = Annotated[ServingMetrics, Depends(_metrics)]

# Rows have INTEGER ids, whose PostgreSQL range ends at 2**31 - 1: a larger id in a path names no row,
# and is refused as such (422) before it reaches a database driver that cannot bind it.
MAX_ROW_ID = 2**31 - 1
RowIdPath = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]

# Strings looked up in the store: a NUL or a lone surrogate is refused (422) here, because PostgreSQL
# cannot even compare text holding one, and would answer 500.
_Storable = AfterValidator(lambda value: check_text(value, "the value"))
ItemIdPath = Annotated[str, Path(min_length=1, max_length=255, description="an item id"), _Storable]
ItemIdQuery = Annotated[str | None, Query(min_length=1, max_length=255, description="an item id"), _Storable]
ModelVersionQuery = Annotated[
    str | None, Query(min_length=1, max_length=255, description="a model version, e.g. 'name:v3'"), _Storable
]


def not_stored(response: Response) -> None:
    """For answers holding brands, key names or reasons: no browser or proxy keeps a copy."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Vary"] = "Cookie, Authorization"
