"""The file MLflow logs as the model's code ("models from code": nothing is pickled). MLflow runs it
when the model is logged and loaded; nothing else imports it."""

from mlflow.models import set_model

from serving.pyfunc import BundlePythonModel

set_model(BundlePythonModel())
