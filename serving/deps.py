"""Dependencies shared by routers (`Annotated` aliases over what the lifespan put on `app.state`)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from hitl.settings import Settings
from serving.metrics import ServingMetrics
from serving.model import ModelHolder
from serving.store import Store


def get_store(request: Request) -> Store:
    return cast(Store, request.app.state.store)


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_model_holder(request: Request) -> ModelHolder:
    return cast(ModelHolder, request.app.state.model)


def get_metrics(request: Request) -> ServingMetrics:
    return cast(ServingMetrics, request.app.state.metrics)


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelHolderDep = Annotated[ModelHolder, Depends(get_model_holder)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
