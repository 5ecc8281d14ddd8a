"""Errors raised by `labeling/`. Every message names the numbers involved (port, PID, status, counts)."""

from __future__ import annotations

from collections.abc import Sequence


class LabelingError(Exception):
    """Base class: anything that went wrong while speaking to (or running) Label Studio."""


class LabelStudioInstallError(LabelingError):
    """Installing Label Studio into its own virtual environment failed."""


class LabelStudioNotInstalledError(LabelingError):
    """The Label Studio virtual environment is missing; run `hitl labelstudio install`."""


class LabelStudioStartError(LabelingError):
    """The server did not become healthy (exited early, port taken, or timed out)."""


class LabelStudioUnavailableError(LabelingError):
    """Label Studio could not be reached, or answered with an unexpected status."""


class LabelStudioApiError(LabelingError):
    """The Label Studio API refused a request."""

    def __init__(self, operation: str, status: int | None, detail: str) -> None:
        self.operation = operation
        self.status = status
        self.detail = detail
        super().__init__(f"Label Studio refused {operation} (HTTP {status}): {detail[:300]}")


class WebhookAuthError(LabelingError):
    """A webhook arrived without the shared secret, or with a wrong one."""


class WebhookPayloadError(LabelingError):
    """A webhook payload did not have the expected shape; `errors` lists one reason per field."""

    def __init__(self, errors: Sequence[dict[str, str]]) -> None:
        self.errors = list(errors)
        reasons = "; ".join(f"{e['loc']}: {e['msg']}" for e in self.errors[:5])
        super().__init__(f"malformed webhook payload ({len(self.errors)} error(s)): {reasons}")
