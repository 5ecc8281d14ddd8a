"""The model being served, and its hot swap.

`ModelHolder.current` is an immutable `LoadedModel` (bundle + encoder + embedding cache + version).
A request reads it ONCE at its start and uses that object to the end, so swapping the attribute (one
atomic reference assignment) never disturbs an in-flight request: it finishes on the old model while
new requests get the new one. Loading happens off the request path (at startup, then in a background
thread that polls the registry alias or the local bundle's manifest).

Sources (``serving.model_source``): ``bundle`` = a local folder (``serving.bundle_path``); ``registry`` =
``models:/<mlflow.registered_model>@<serving.model_alias>``; ``auto`` = the bundle when a path is set,
else the registry when its database exists (an absent sqlite file means nothing was ever registered,
and creating an empty MLflow database just to find that out is not a side effect a server should have);
``none`` = no model (the app still serves the webhook, history and audit; /readyz says not ready).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from learner.bundle import MANIFEST_NAME, ModelBundle
from learner.cache import EmbeddingCache
from learner.encoder import TextEncoder, encoder_from
from learner.pii import describe_error
from serving.embeddings import vector_store_for
from serving.settings import AppSettings
from serving.store import Store

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str], TextEncoder]


class ModelNotReadyError(RuntimeError):
    """No model is loaded (yet): predictions answer 503."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded (bad bundle, encoder mismatch, registry unreachable)."""


@dataclass(frozen=True)
class LoadedModel:
    """One servable model. Never mutated: a swap replaces the whole object."""

    version: str
    source: str
    bundle: ModelBundle
    cache: EmbeddingCache
    centroids: NDArray[np.float64] | None
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        return self.cache.embed(texts)

    def embeddings_in_memory(self, texts: list[str]) -> bool:
        """Whether `embed(texts)` is a memory lookup (no database, no encoder)."""
        return self.cache.in_memory(texts)

    def features(self, texts: list[str]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(encoder embeddings, head inputs) of `texts`: embeddings for the OOD centroid check, inputs
        built exactly as the bundle's training did (`ModelBundle.features`, e.g. + hashed n-grams)."""
        embeddings = self.embed(texts)
        return embeddings, self.bundle.model_inputs(embeddings, texts)

    def predict_proba(self, inputs: NDArray[np.float32]) -> NDArray[np.float64]:
        """Calibrated probabilities of head inputs from `features` (not raw embeddings)."""
        return self.bundle.predict_proba(inputs)


def manifest_digest(bundle_dir: Path) -> str:
    return hashlib.sha256((bundle_dir / MANIFEST_NAME).read_bytes()).hexdigest()


def local_version(bundle_dir: Path) -> str:
    """A local bundle's version: its folder name and manifest digest (a rewritten bundle is a new version)."""
    return f"local:{bundle_dir.resolve().name}@{manifest_digest(bundle_dir)[:12]}"


def _centroids(bundle: ModelBundle) -> NDArray[np.float64] | None:
    raw = bundle.metadata.get("class_centroids")
    if raw is None:
        return None
    array = np.asarray(raw, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != len(bundle.labels):
        logger.warning("ignoring class_centroids of shape %s", array.shape)
        return None
    return array


class ModelHolder:
    """Holds the current `LoadedModel` and swaps it atomically.

    Parameters
    ----------
    settings : the app's settings (source, paths, poll interval, encoder options)
    encoder_factory : builds an encoder from a ref; default `HFEncoder` with the learner settings.
        Encoders are reused across swaps when the new bundle names the same ref and encoder id.
    """

    def __init__(self, settings: AppSettings, *, encoder_factory: EncoderFactory | None = None) -> None:
        self.settings = settings
        self._encoder_factory = encoder_factory or self._default_encoder
        self._encoders: dict[str, TextEncoder] = {}
        self._caches: dict[str, EmbeddingCache] = {}
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.on_swap: list[Callable[[LoadedModel], None]] = []

    # ------------------------------------------------------------------ access
    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReadyError(self.last_error or "no model is loaded")
        return model

    @property
    def source(self) -> str:
        wanted = self.settings.serving.model_source
        if wanted != "auto":
            return wanted
        if self.settings.serving.bundle_path is not None:
            return "bundle"
        return "registry" if self._registry_exists() else "none"

    def _registry_exists(self) -> bool:
        uri = self.settings.tracking_uri
        if uri.startswith("sqlite:///"):
            return Path(uri.removeprefix("sqlite:///")).is_file()
        return True

    # ----------------------------------------------------------------- loading
    def _default_encoder(self, ref: str) -> TextEncoder:
        return encoder_from(self.settings.learner, ref)

    def _cache_for(self, ref: str, encoder_id: str) -> EmbeddingCache:
        key = f"{ref}|{encoder_id}"
        cache = self._caches.get(key)
        if cache is None:
            encoder = self._encoders.get(key) or self._encoder_factory(ref)
            if encoder.encoder_id != encoder_id:
                raise ModelLoadError(
                    f"the bundle was trained on encoder {encoder_id!r} but {ref!r} is {encoder.encoder_id!r}"
                )
            self._encoders[key] = encoder
            cache = EmbeddingCache(self.settings.cache_dir, encoder, vectors=vector_store_for(self.settings))
            self._caches[key] = cache
        return cache

    def build(self, bundle_dir: Path, version: str, source: str) -> LoadedModel:
        """Load a bundle folder into a `LoadedModel` (does not swap)."""
        try:
            bundle = ModelBundle.load(bundle_dir, device="cpu")
        except Exception as exc:  # BundleFormatError, or a broken head file
            raise ModelLoadError(f"cannot load bundle {str(bundle_dir)!r}: {exc}") from exc
        cache = self._cache_for(bundle.resolve_encoder_ref(), bundle.encoder_id)
        return LoadedModel(
            version=version, source=source, bundle=bundle, cache=cache, centroids=_centroids(bundle)
        )

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make `model` current; returns the previous one (still valid for requests holding it)."""
        with self._swap_lock:
            for callback in self.on_swap:  # e.g. record the version before any prediction names it
                callback(model)
            previous, self._current = self._current, model
            self._forget_encoders(keep=[model, previous])
        self.last_error = None
        logger.info("serving model %s (%s)", model.version, model.source)
        return previous

    @property
    def encoders_loaded(self) -> int:
        """Encoders (with their embedding caches) this holder keeps loaded."""
        return len(self._caches)

    def _forget_encoders(self, keep: list[LoadedModel | None]) -> None:
        """Drop the encoders and caches no longer used by the current or the previous model. With a
        frozen encoder every version shares one; each fine-tuned version brings its own (~90 MB), and
        a long-running server must not keep them all. Dropped, not closed: a request may still hold
        an older model, and its cache closes when the last reference goes."""
        used = {id(m.cache) for m in keep if m is not None}
        for key in [k for k, cache in self._caches.items() if id(cache) not in used]:
            del self._caches[key]
            self._encoders.pop(key, None)

    def load_bundle(self, bundle_dir: Path, *, version: str | None = None) -> LoadedModel:
        model = self.build(bundle_dir, version or local_version(bundle_dir), f"bundle:{bundle_dir}")
        self.swap(model)
        return model

    def refresh(self) -> bool:
        """Load and swap in a newer model when the source has one; True when a swap happened."""
        source = self.source
        current = self._current
        try:
            if source == "bundle":
                path = self.settings.serving.bundle_path
                if path is None:
                    raise ModelLoadError("serving.model_source is 'bundle' but serving.bundle_path is unset")
                version = local_version(Path(path))
                if current is not None and current.version == version:
                    return False
                self.load_bundle(Path(path), version=version)
                return True
            if source == "registry":
                from serving import registry

                try:
                    found = registry.champion_version(self.settings)
                except registry.RegistryUnavailableError as exc:
                    if current is not None or not self._serve_last_champion(exc):
                        raise
                    return True
                if found is None:
                    self.last_error = (
                        f"no model has the alias {self.settings.serving.model_alias!r} in the registry"
                    )
                    return False
                version = registry.version_label(self.settings, found)
                if current is not None and current.version == version:
                    return False
                folder = registry.download(self.settings, found)
                self.swap(self.build(folder, version, f"registry:{version}"))
                registry.remember_champion(self.settings, found)
                registry.prune_downloads(self.settings, keep=[found])
                return True
        except (ModelLoadError, OSError) as exc:
            self.last_error = describe_error(exc)
            if current is None:
                raise
            logger.error("model refresh failed, still serving %s: %s", current.version, self.last_error)
            return False
        except Exception as exc:  # the registry client raises its own types
            self.last_error = describe_error(exc)
            if current is None:
                raise ModelLoadError(self.last_error) from exc
            logger.error("model refresh failed, still serving %s: %s", current.version, self.last_error)
            return False
        self.last_error = "no model source configured (serving.model_source)"
        return False

    def _serve_last_champion(self, exc: BaseException) -> bool:
        """With no model loaded and the registry unreachable: serve the champion last served from it,
        from its local copy, until the registry answers again (the poller then swaps as usual).
        Without a copy on this machine there is nothing to serve: False."""
        from serving import registry

        found = registry.last_champion(self.settings)
        if found is None:
            return False
        version, folder = found
        label = registry.version_label(self.settings, version)
        self.swap(self.build(folder, label, f"registry-copy:{label}"))
        self.last_error = f"the registry is unreachable; serving the last champion's local copy ({label})"
        logger.warning("%s: %s", self.last_error, describe_error(exc))
        return True

    # -------------------------------------------------------------- background
    def start(self) -> None:
        """Poll the source every `serving.model_poll_interval_s` (0 = never) in a daemon thread."""
        interval = self.settings.serving.model_poll_interval_s
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(interval,), name="model-poll", daemon=True)
        self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:  # keep polling: the next attempt may succeed
                logger.warning("model refresh failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        for cache in self._caches.values():
            cache.close()
        self._caches.clear()


def record_version(store: Store, model: LoadedModel) -> None:
    """Register `model`'s version in the store (what its predictions refer to); idempotent."""
    store.register_model_version(
        model.version,
        source=model.source,
        encoder_id=model.bundle.encoder_id,
        n_labels=len(model.labels),
        details={
            "created_at": model.bundle.metadata.get("created_at"),
            "classes_auto_accepted": int(
                sum(t is not None for t in model.bundle.thresholds.to_dict()["thresholds"])
            ),
        },
    )
