"""The MLflow model registry: log a bundle, move the champion alias, find and download the champion.

The only module that imports mlflow, and only inside functions (``import mlflow`` costs ~2 s). The
tracking URI always comes from settings (never MLflow's cwd default), and experiments are created with
an explicit artifact location under the state dir, so nothing lands in ``./mlruns``.

A bundle is logged as a pyfunc model whose artifacts are the bundle folder; `pip_requirements` is
explicit (MLflow's inference of it costs seconds per call). `download` fetches the folder back and
returns the bundle path inside it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from learner.files import replaced_atomically
from learner.pii import describe_error
from serving import tracking
from serving.settings import AppSettings

BUNDLE_ARTIFACT = "bundle"
LAST_CHAMPION = "last-champion"  # the champion's version, beside the downloaded bundles
KEEP_DOWNLOADS = 3  # newest downloaded versions kept besides the champion (`prune_downloads`)
MODEL_NAME_IN_RUN = "model"


def _client(settings: AppSettings) -> Any:
    return tracking.client(settings)


def _pip_requirements() -> list[str]:
    from importlib import metadata

    pins = []
    for dist in ("mlflow", "numpy", "pydantic", "torch", "transformers"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            pins.append(dist)
    return pins


def import_mlflow() -> None:
    """Import MLflow's modules now, in this thread (~1 s). Call it before starting threads that use
    MLflow: two threads importing it for the first time at once can see a partially initialised
    ``mlflow.tracking`` and fail with ImportError ("cannot import name '_get_store'")."""
    import mlflow.entities
    import mlflow.exceptions
    import mlflow.pyfunc
    import mlflow.tracking  # noqa: F401


def log_bundle(
    settings: AppSettings,
    bundle_dir: Path,
    *,
    alias: str | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
) -> str:
    """Log `bundle_dir` as a new version of `mlflow.registered_model`; point `alias` at it when given.

    Returns the registered version (a string, as MLflow numbers them: "1", "2", ...).
    """
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings)) as run:
        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics(metrics)
        info = log_pyfunc(bundle_dir)
        run_id = run.info.run_id
    version = register(settings, info, run_id)
    if alias:
        set_alias(settings, version, alias)
    return version


def register(settings: AppSettings, info: Any, run_id: str, *, tags: Mapping[str, str] | None = None) -> str:
    """Register the model `info` (what `log_pyfunc` returned) logged in `run_id` as a new version of
    `mlflow.registered_model`, creating the registered model when missing; the new version (a string)."""
    client = _client(settings)
    name = settings.mlflow.registered_model
    tracking.ensure_registered_model(client, name)
    source = getattr(info, "model_uri", None) or f"runs:/{run_id}/{MODEL_NAME_IN_RUN}"
    # The logged model's id is required when the registry is an MLflow server (source models:/m-...).
    model_id = getattr(info, "model_id", None)
    created = client.create_model_version(
        name, source, run_id=run_id, tags=dict(tags or {}), model_id=model_id
    )
    return str(created.version)


def log_pyfunc(bundle_dir: Path) -> Any:
    """Log `bundle_dir` as the active run's pyfunc model: the model from code (`serving/pyfunc_model.py`,
    nothing pickled), its signature from the type hints, explicit pip requirements. Returns MLflow's
    ModelInfo."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
        pip_requirements=_pip_requirements(),
    )


def set_alias(settings: AppSettings, version: str, alias: str | None = None) -> None:
    """Point `alias` (default: the served alias, `serving.model_alias`) at `version`."""
    _client(settings).set_registered_model_alias(
        settings.mlflow.registered_model, alias or settings.serving.model_alias, version
    )


# MLflow's answers for "there is no such registered model / alias" (the SQL, file and REST stores
# alike). Every other error means the registry could not answer, which is not the same as it being empty.
_ABSENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class RegistryUnavailableError(RuntimeError):
    """The model registry could not answer (MLflow down, slow or failing). Callers must not read this
    as "no champion": a retrain would then promote its challenger without the gate."""


def is_absent(exc: BaseException) -> bool:
    """Whether an MLflow error says that what was asked for does not exist (not that MLflow failed)."""
    return getattr(exc, "error_code", None) in _ABSENT


def champion_version(settings: AppSettings, alias: str | None = None) -> str | None:
    """The version the served alias points to, or None when the model or alias does not exist.

    Raises
    ------
    RegistryUnavailableError
        when MLflow could not answer (unreachable, timed out, an internal error): the message is
        masked (`learner.pii.describe_error`), since MLflow quotes the tracking URI.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = _client(settings).get_model_version_by_alias(
            settings.mlflow.registered_model, alias or settings.serving.model_alias
        )
    except MlflowException as exc:
        if is_absent(exc):
            return None
        raise RegistryUnavailableError(f"the model registry did not answer: {describe_error(exc)}") from exc
    return str(found.version)


def registered_versions(settings: AppSettings) -> tuple[list[Any], dict[str, str]]:
    """(every version of the registered model, alias -> version); ([], {}) when none is registered.

    Raises
    ------
    RegistryUnavailableError
        when MLflow could not answer: an empty list would then be a wrong answer.
    """
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    name = settings.mlflow.registered_model
    try:
        found = list(client.search_model_versions(f"name='{name}'"))
        # search_model_versions leaves `aliases` empty; the registered model holds them.
        aliases = dict(getattr(client.get_registered_model(name), "aliases", {}) or {})
    except MlflowException as exc:
        if is_absent(exc):
            return [], {}
        raise RegistryUnavailableError(f"the model registry did not answer: {describe_error(exc)}") from exc
    return found, {str(k): str(v) for k, v in aliases.items()}


def version_label(settings: AppSettings, version: str) -> str:
    """The model version string we show and store: ``<registered model>:v<version>``."""
    return f"{settings.mlflow.registered_model}:v{version}"


def download_dir(settings: AppSettings) -> Path:
    """Where `download` puts registered versions, one folder each."""
    return settings.models_dir / "registry" / settings.mlflow.registered_model


def remember_champion(settings: AppSettings, version: str) -> None:
    """Note `version` as the champion last served from the registry (next to its downloaded copy), so
    a replica restarted while MLflow is down can serve it (`last_champion`)."""
    folder = download_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(folder / LAST_CHAMPION) as tmp:
        tmp.write_text(f"{version}\n")


def last_champion(settings: AppSettings) -> tuple[str, Path] | None:
    """(version, bundle folder) of the champion last served from the registry, when its downloaded
    copy is still complete on this machine; else None."""
    try:
        version = (download_dir(settings) / LAST_CHAMPION).read_text().strip()
    except OSError:
        return None
    folder = download_dir(settings) / version
    if not version.isdigit() or not (folder / "manifest.json").is_file():
        return None
    return version, folder


def prune_downloads(settings: AppSettings, keep: Collection[str], newest: int = KEEP_DOWNLOADS) -> list[str]:
    """Delete downloaded versions other than `keep`, the champion last served (`last_champion`) and the
    `newest` highest: a fine-tuned version holds its encoder (~90 MB), and a server promoting one per
    retrain must not fill the disk. Returns the versions deleted. Another replica that still needs
    one downloads it again (`download`)."""
    folder = download_dir(settings)
    if not folder.is_dir():
        return []
    versions = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    last = last_champion(settings)
    kept = set(keep) | set(versions[-newest:] if newest > 0 else []) | ({last[0]} if last else set())
    deleted = [v for v in versions if v not in kept]
    for version in deleted:
        shutil.rmtree(folder / version, ignore_errors=True)
    return deleted


def download(settings: AppSettings, version: str) -> Path:
    """Fetch a registered version's bundle into ``state_dir/models/registry/<name>/<version>``.

    Returns the bundle folder. A version already downloaded is not fetched again (versions are
    immutable); a half-finished download is never visible under the final name.
    """
    import mlflow

    target = download_dir(settings) / str(version)
    if (target / "manifest.json").is_file():
        return target
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
    try:
        uri = f"models:/{settings.mlflow.registered_model}/{version}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
        bundle = next((p.parent for p in local.rglob("manifest.json")), None)
        if bundle is None:
            raise FileNotFoundError(f"{uri} holds no model bundle (no manifest.json)")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(bundle), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
