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

        self._bundle = ModelBundle.load(context.artifacts["bundle"], device="cpu")
        self._encoder = HFEncoder(self._bundle.resolve_encoder_ref(), device="cpu")

    # MLflow reads these hints at class creation: the annotations must stay evaluable (no string forms).
    def predict(self, model_input: list[str], params: dict[str, str] | None = None) -> list[Categorized]:
        items = [str(t) for t in model_input]
        inputs = self._bundle.model_inputs(self._encoder.encode(items), items)
        labels, confidence, accepted = self._bundle.predict(inputs)
        return [
            Categorized(label=str(label), confidence=float(p), auto_accept=bool(a))
            for label, p, a in zip(labels, confidence, accepted, strict=True)
        ]
