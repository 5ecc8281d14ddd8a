"""A trained model on disk: head weights, temperature, thresholds, labels and the encoder to pair with.

Layout of a bundle folder::

    manifest.json   format_version, encoder ref/id, features (how texts + embeddings become head
                    inputs, `learner.features.FeatureSpec`; absent = embedding only), temperature,
                    thresholds, labels, head params, metadata, and the sha256 of every other file
    head.npz        head tensors (numpy arrays, loaded with allow_pickle=False)
    encoder/        optional: a fine-tuned encoder, referenced as "bundle:encoder"

Nothing is pickled, so loading a bundle cannot execute code. The manifest is written last, so a
half-written bundle has no manifest and is rejected as incomplete.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from learner.calibration import softmax
from learner.device import resolve_device
from learner.exceptions import BundleFormatError
from learner.features import FeatureSpec
from learner.files import replaced_atomically
from learner.head import TorchHeadClassifier
from learner.thresholds import ClassThresholds

BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
HEAD_WEIGHTS_NAME = "head.npz"
BUNDLE_REF_PREFIX = "bundle:"


def _inside(name: str) -> bool:
    """Whether a name from a manifest stays inside the bundle's folder."""
    return bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def _bundled_subfolder(encoder_ref: str) -> str:
    """The folder a ``bundle:<subdir>`` encoder_ref names, checked to lie inside the bundle."""
    sub = encoder_ref[len(BUNDLE_REF_PREFIX) :]
    if not _inside(sub):
        raise BundleFormatError(f"encoder_ref {encoder_ref!r} must name a subfolder of the bundle")
    return sub


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Metadata -> strict JSON: numpy scalars/arrays to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _package_version() -> str | None:
    try:
        return importlib_metadata.version("hitl")
    except importlib_metadata.PackageNotFoundError:
        return None


@dataclass
class ModelBundle:
    """Everything needed to turn embeddings into calibrated, thresholded predictions.

    Parameters
    ----------
    encoder_ref : str
        Encoder name or path to load with `HFEncoder`, or ``"bundle:<subdir>"`` for a fine-tuned
        encoder stored inside the bundle (see `resolve_encoder_ref`).
    encoder_id : str
        `encoder_id` of the encoder the head was trained on; embeddings from any other encoder are
        meaningless to the head.
    head : TorchHeadClassifier
        Fitted head; ``head.classes_`` must equal `labels`.
    temperature : float
        Softmax temperature fitted on the calibration split.
    thresholds : ClassThresholds
        Per-class auto-accept thresholds on the calibrated probabilities.
    labels : list of str
        Category path of each probability column.
    metadata : dict
        JSON-able facts: created_at, n_labels, seed, metrics, ...
    features : FeatureSpec
        How head inputs are built from texts and their embeddings (`model_inputs`); serving must
        build them exactly so.
    source_dir : Path, optional
        Folder the bundle was loaded from (set by `load`); resolves ``bundle:`` encoder refs.
    """

    encoder_ref: str
    encoder_id: str
    head: TorchHeadClassifier
    temperature: float
    thresholds: ClassThresholds
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    source_dir: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        classes = getattr(self.head, "classes_", None)
        if classes is None:
            raise ValueError("the bundle's head is not fitted")
        class_names = [str(c) for c in classes]
        if class_names != list(self.labels):
            raise ValueError(
                f"labels must equal head.classes_ in order; got {len(self.labels)} labels "
                f"(first: {self.labels[:3]}) for {len(class_names)} classes (first: {class_names[:3]})"
            )
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite positive number, got {self.temperature}")
        if len(self.thresholds.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds.thresholds)} thresholds for {len(self.labels)} labels")

    # -- prediction ---------------------------------------------------------------------------------

    def model_inputs(self, embeddings: ArrayLike, texts: list[str]) -> NDArray[np.float32]:
        """Head inputs for `texts` given their encoder embeddings (see `FeatureSpec.model_inputs`)."""
        return self.features.model_inputs(embeddings, texts)

    def predict_proba(self, embeddings: ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities ``softmax(head.logits / temperature)``.

        Parameters
        ----------
        embeddings : (n, dim) head inputs: `model_inputs` (for an embedding-only bundle, the
            embeddings from the encoder named by `encoder_id`)

        Returns
        -------
        (n, n_labels) float64, columns ordered as `labels`
        """
        # The same softmax the temperature and thresholds were fitted with, so thresholds apply exactly.
        return softmax(self.head.logits(embeddings), self.temperature)

    def predict(self, embeddings: ArrayLike) -> tuple[list[str], NDArray[np.float64], NDArray[np.bool_]]:
        """Predicted label, its acceptance confidence, and whether it clears the auto-accept threshold.

        Returns
        -------
        labels : list of n str
        confidence : (n,) float64
        accepted : (n,) bool
        """
        proba = self.predict_proba(embeddings)
        best = np.argmax(proba, axis=1)
        confidence = self.confidence(proba)
        return [self.labels[i] for i in best], confidence, self.thresholds.accepts(confidence, best)

    def confidence(self, proba: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """(n, n_labels) calibrated probabilities -> (n,) the confidence this bundle's certified
        thresholds apply to (`learner.thresholds.acceptance_confidence` with its recorded score)."""
        return self.thresholds.confidence(proba)

    def resolve_encoder_ref(self) -> str:
        """`encoder_ref` as something `HFEncoder` can load: ``bundle:`` refs become absolute paths."""
        if not self.encoder_ref.startswith(BUNDLE_REF_PREFIX):
            return self.encoder_ref
        if self.source_dir is None:
            raise BundleFormatError(
                f"encoder_ref {self.encoder_ref!r} points inside a bundle, but this bundle was not loaded "
                "from disk; save and load it first"
            )
        return str(self.source_dir / self.encoder_ref[len(BUNDLE_REF_PREFIX) :])

    # -- persistence ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle into `directory` (created if needed); returns the folder.

        A ``bundle:<subdir>`` encoder must already be in `directory` (e.g. written there by
        `FineTuneClassifier.save`) or in the folder this bundle was loaded from, whence it is copied.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}

        if self.encoder_ref.startswith(BUNDLE_REF_PREFIX):
            sub = _bundled_subfolder(self.encoder_ref)
            dest = target / sub
            if not dest.is_dir():
                origin = self.source_dir / sub if self.source_dir is not None else None
                if origin is None or not origin.is_dir():
                    raise BundleFormatError(
                        f"encoder_ref {self.encoder_ref!r}: no encoder folder at {str(dest)!r} to bundle"
                    )
                # Copied beside, then renamed: an interrupted copy never passes for the encoder.
                partial = dest.with_name(f".{dest.name}.partial")
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(origin, partial)
                partial.rename(dest)

        state = self.head.get_state()
        tensors: dict[str, NDArray[Any]] = state["tensors"]
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **tensors)
        head_bytes = buffer.getvalue()
        files[HEAD_WEIGHTS_NAME] = hashlib.sha256(head_bytes).hexdigest()

        meta = {"n_labels": len(self.labels), **self.metadata}
        meta.setdefault("package_version", _package_version())
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "encoder_ref": self.encoder_ref,
            "encoder_id": self.encoder_id,
            "features": self.features.to_dict(),
            # repr round-trips a float exactly, so a reloaded bundle gives bit-identical probabilities.
            "temperature": float(self.temperature),
            "labels": list(self.labels),
            "thresholds": _jsonable(self.thresholds.to_dict()),
            "head": {
                "params": _jsonable(state["params"]),
                "n_features": state["n_features"],
                "n_iter": state["n_iter"],
                "loss": _jsonable(state["loss"]),
                "tensors": sorted(tensors),
            },
            "files": files,
            "metadata": _jsonable(meta),
        }
        # Serialised before anything is written: a manifest that cannot be written (metadata no JSON
        # can hold) leaves a bundle already in `directory` as it was.
        text = json.dumps(manifest, indent=2, allow_nan=False, ensure_ascii=False)
        with replaced_atomically(target / HEAD_WEIGHTS_NAME) as tmp:
            tmp.write_bytes(head_bytes)
        with replaced_atomically(target / MANIFEST_NAME) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str = "auto") -> ModelBundle:
        """Read a bundle written by `save`.

        Parameters
        ----------
        directory : folder holding manifest.json
        device : where the head runs ("auto" by default, so GPU-trained bundles load on CPU servers)

        Raises
        ------
        BundleFormatError
            The folder or a file is missing, a file is corrupt, or the format version differs.
        """
        resolve_device(device)  # an unavailable device is the caller's error, not a corrupt bundle
        source = Path(directory)
        manifest_path = source / MANIFEST_NAME
        if not source.is_dir():
            raise BundleFormatError(f"model bundle {str(source)!r} does not exist or is not a folder")
        if not manifest_path.is_file():
            raise BundleFormatError(f"model bundle {str(source)!r} is incomplete: missing {MANIFEST_NAME}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleFormatError(f"{manifest_path} is corrupt: {exc}") from exc
        if not isinstance(manifest, dict):
            raise BundleFormatError(f"{manifest_path} is corrupt: expected a JSON object")

        found = manifest.get("format_version")
        if found != BUNDLE_FORMAT_VERSION:
            raise BundleFormatError(
                f"model bundle {str(source)!r} has format_version {found!r}; this code reads version "
                f"{BUNDLE_FORMAT_VERSION}. Retrain, or load it with the release that wrote it."
            )

        try:
            files: dict[str, str] = manifest["files"]
            if not isinstance(files, dict) or HEAD_WEIGHTS_NAME not in files:
                raise BundleFormatError(f"{manifest_path} is corrupt: 'files' must list {HEAD_WEIGHTS_NAME}")
            for name in files:  # all checked before any is read
                if not _inside(name):
                    raise BundleFormatError(
                        f"{manifest_path} is corrupt: {name!r} is not a file of the bundle"
                    )
            for name, expected in files.items():
                path = source / name
                if not path.is_file():
                    raise BundleFormatError(f"model bundle {str(source)!r} is incomplete: missing {name}")
                actual = _sha256(path)
                if actual != expected:
                    raise BundleFormatError(
                        f"{path} is corrupt: sha256 {actual[:12]}... differs from the manifest's "
                        f"{expected[:12]}..."
                    )
            head_info = manifest["head"]
            labels = [str(label) for label in manifest["labels"]]
            try:
                with np.load(source / HEAD_WEIGHTS_NAME, allow_pickle=False) as npz:
                    tensors = {name: npz[name] for name in head_info["tensors"]}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                raise BundleFormatError(f"{source / HEAD_WEIGHTS_NAME} is corrupt: {exc}") from exc
            head = TorchHeadClassifier.from_state(
                {
                    "params": head_info["params"],
                    "classes": np.asarray(labels),
                    "n_features": head_info["n_features"],
                    "n_iter": head_info.get("n_iter", 0),
                    "loss": head_info.get("loss") if head_info.get("loss") is not None else math.nan,
                    "tensors": tensors,
                },
                device=device,
            )
            bundle = cls(
                encoder_ref=str(manifest["encoder_ref"]),
                encoder_id=str(manifest["encoder_id"]),
                head=head,
                temperature=float(manifest["temperature"]),
                thresholds=ClassThresholds.from_dict(manifest["thresholds"]),
                labels=labels,
                metadata=dict(manifest.get("metadata", {})),
                features=FeatureSpec.from_dict(manifest.get("features")),
                source_dir=source.resolve(),
            )
        except BundleFormatError:
            raise
        # RuntimeError: torch refusing the head's shapes (a tampered n_features asks for terabytes).
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise BundleFormatError(
                f"{manifest_path} is corrupt or inconsistent: {type(exc).__name__}: {exc}"
            ) from exc

        if bundle.encoder_ref.startswith(BUNDLE_REF_PREFIX):
            sub = _bundled_subfolder(bundle.encoder_ref)  # never a folder outside the bundle
            if not Path(bundle.resolve_encoder_ref()).is_dir():
                raise BundleFormatError(
                    f"model bundle {str(source)!r} is incomplete: missing encoder folder {sub!r}"
                )
        return bundle
