"""The pyfunc wrapper logged with each bundle, so `mlflow.pyfunc.load_model(...)` can also predict.

Imported only by `serving.registry` (it imports mlflow at the top, which costs ~2 s).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class BundlePythonModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Input: a DataFrame with a ``text`` column (or a list of texts). Output: label and confidence."""

    def load_context(self, context: Any) -> None:
        from learner.bundle import ModelBundle
        from learner.encoder import HFEncoder

        self._bundle = ModelBundle.load(context.artifacts["bundle"], device="cpu")
        self._encoder = HFEncoder(self._bundle.resolve_encoder_ref(), device="cpu")

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd  # type: ignore[import-untyped]

        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        items = [str(t) for t in texts]
        inputs = self._bundle.model_inputs(self._encoder.encode(items), items)
        labels, confidence, accepted = self._bundle.predict(inputs)
        return pd.DataFrame({"label": labels, "confidence": confidence, "auto_accept": accepted})
