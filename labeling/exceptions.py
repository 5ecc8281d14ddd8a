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


class ReviewerDirectoryUnavailable(LabelingError):
    """Whether a reviewer is senior cannot be told now: Label Studio's user directory does not hold the
    user, and it cannot be read again (it fails, or it was read a moment ago, maybe before the user
    existed). Nothing is stored; the periodic sync tries again."""

    def __init__(self, user_id: int, known_users: int, why: str = "cannot be read") -> None:
        self.user_id = user_id
        super().__init__(
            f"Label Studio's user directory {why}, and user {user_id} is not among the {known_users} "
            "users it held at its last read: whether they are a senior reviewer is unknown"
        )


class UnknownProjectError(LabelingError):
    """An annotation of a project the store has not recorded: no taxonomy to judge its label by."""

    def __init__(self, project_id: int | None) -> None:
        self.project_id = project_id
        super().__init__(
            f"project {project_id} is not bootstrapped here: nothing recorded (the periodic sync records "
            "its annotations once `hitl labelstudio bootstrap` has recorded the project)"
        )


class WebhookAuthError(LabelingError):
    """A webhook arrived without the shared secret, or with a wrong one."""


class WebhookPayloadError(LabelingError):
    """A webhook payload did not have the expected shape; `errors` lists one reason per field."""

    def __init__(self, errors: Sequence[dict[str, str]]) -> None:
        self.errors = list(errors)
        reasons = "; ".join(f"{e['loc']}: {e['msg']}" for e in self.errors[:5])
        super().__init__(f"malformed webhook payload ({len(self.errors)} error(s)): {reasons}")
