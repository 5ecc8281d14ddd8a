"""The pyfunc wrapper logged with each bundle, so `mlflow.pyfunc.load_model(...)` can also predict.

Logged as a model from code (`serving/pyfunc_model.py`), not as a pickled object, and with type hints
MLflow turns into the signature: a list of texts in, one `Categorized` per text out. Imported only when a
model is logged or loaded (mlflow costs ~2 s to import).
"""

from typing import Any

import mlflow.pyfunc
from pydantic import BaseModel


class Categorized(BaseModel):
    label: str
    confidence: float
    auto_accept: bool


class BundlePythonModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Input: the texts (a list, or a DataFrame of one ``text`` column). Output: label and confidence."""

    def load_context(self, context: Any) -> None:
        from learner.bundle import ModelBundle
        from learner.encoder import HFEncoder

        bundle = ModelBundle.load(context.artifacts["bundle"], device="cpu")
        # The truncation length is part of the encoder's id (bundles before it was recorded: 128).
        max_length = int(bundle.metadata.get("encoder_max_length", 128))
        encoder = HFEncoder(bundle.resolve_encoder_ref(), device="cpu", max_length=max_length)
        if encoder.encoder_id != bundle.encoder_id:
            raise ValueError(
                f"the bundle was trained on encoder {bundle.encoder_id!r}, but "
                f"{bundle.encoder_ref!r} loads as {encoder.encoder_id!r}"
            )
        self._bundle, self._encoder = bundle, encoder

    # MLflow reads these hints at class creation: the annotations must stay evaluable (no string forms).
    def predict(self, model_input: list[str], params: dict[str, str] | None = None) -> list[Categorized]:
        items = [str(t) for t in model_input]
        inputs = self._bundle.model_inputs(self._encoder.encode(items), items)
        labels, confidence, accepted = self._bundle.predict(inputs)
        return [
            Categorized(label=str(label), confidence=float(p), auto_accept=bool(a))
            for label, p, a in zip(labels, confidence, accepted, strict=True)
        ]
