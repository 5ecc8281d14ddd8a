"""The one place that speaks to Label Studio's HTTP API.

Plain httpx against the documented REST API (the same endpoints label-studio-sdk 2.1.2 calls): JSON in,
JSON out, every non-2xx turned into `LabelStudioApiError` with the status code. The SDK's generated
models are not needed for the handful of calls below and would add a second layer of types to keep in
step with the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from labeling.exceptions import LabelingError, LabelStudioApiError, LabelStudioUnavailableError
from labeling.settings import LabelStudioSettings
from learner.pii import mask_credentials

WEBHOOK_PATH = "/v1/webhooks/label-studio"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")

# How merchandisers get their next task. Label Studio 1.23 open source (projects/functions/next_task.py):
#   "Sequential sampling"  -> lowest task id first (import order);
#   "Uniform sampling"     -> random;
#   "Uncertainty sampling" -> among tasks whose prediction has the project's current `model_version`,
#                             LOWEST `predictions.score` first (with more than one annotator it picks at
#                             random among the first n_annotators + 1 to avoid collisions); if no task has a
#                             current prediction it falls back to random.
# We use uncertainty sampling and push `score = 1 - priority` (see `labeling.push`), so the most useful
# item is always served first, across batches, whatever the strategy that computed the priority; and we
# keep the project's `model_version` equal to the promoted model so the ordering never falls back to random.
SAMPLING = "Uncertainty sampling"
# Queue settings every project of ours has (set at creation, restored by a bootstrap): a skipped task
# comes back to the reviewer who skipped it, after the rest of their queue (Label Studio's default
# hands it to *other* reviewers only, so with one merchandiser a skipped audit left the queue for good);
# and a submission with no category chosen is refused in the editor (Label Studio would count it as
# finishing the task, while it is no label).
QUEUE_SETTINGS: dict[str, object] = {"skip_queue": "REQUEUE_FOR_ME", "enable_empty_annotation": False}


@dataclass(frozen=True)
class ProjectInfo:
    project_id: int
    webhook_id: int
    project_created: bool
    webhook_created: bool
    config_updated: bool


@dataclass(frozen=True)
class MLBackendSpec:
    """How Label Studio reaches our ML backend (`serving.routers.ml_backend`); no password: no auth."""

    url: str
    title: str = "hitl"
    user: str | None = None
    password: str | None = None

    def body(self) -> dict[str, Any]:
        """The fields of Label Studio's `POST/PATCH /api/ml` that we own."""
        if self.user is None or self.password is None:
            return {"url": self.url, "title": self.title, "auth_method": "NONE", "is_interactive": False}
        return {
            "url": self.url,
            "title": self.title,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": self.user,
            "basic_auth_pass": self.password,
            "is_interactive": False,
        }


# Label Studio's ML backend states (ml/models.py): connected, disconnected, error, training, predicting.
ML_BACKEND_STATES = {
    "CO": "connected",
    "DI": "disconnected",
    "ER": "error",
    "TR": "training",
    "PR": "predicting",
}


@dataclass(frozen=True)
class LiveTask:
    """A task as Label Studio holds it now: its id, and whether a reviewer annotated it (a skip does
    not count: it carries no label)."""

    id: int
    annotated: bool

    @classmethod
    def of(cls, task: Mapping[str, Any]) -> LiveTask:
        annotations = task.get("annotations") or []
        annotated = any(isinstance(a, Mapping) and not a.get("was_cancelled") for a in annotations)
        return cls(int(task["id"]), annotated or int(task.get("total_annotations") or 0) > 0)


def unreviewed_tasks(live: Mapping[str, Sequence[LiveTask]]) -> dict[str, int]:
    """item id -> its oldest task no reviewer annotated (items with none are absent)."""
    found: dict[str, int] = {}
    for item, tasks in live.items():
        fresh = sorted(t.id for t in tasks if not t.annotated)
        if fresh:
            found[item] = fresh[0]
    return found


@dataclass(frozen=True)
class ReviewerAccount:
    user_id: int
    email: str
    token: str


class LabelStudioClient:
    """A thin, typed client. Build it with `from_settings`; close it (or use `with`)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        # Legacy tokens ("Token <t>"); JWT personal access tokens would need a refresh flow.
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Token {token}"}, timeout=timeout
        )

    @classmethod
    def from_settings(cls, settings: LabelStudioSettings) -> LabelStudioClient:
        return cls(settings.base_url, settings.token.get_secret_value(), timeout=settings.request_timeout_s)

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ core
    def _request(self, method: str, path: str, operation: str, **kwargs: Any) -> Any:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioUnavailableError(
                f"Label Studio at {mask_credentials(self.base_url)} did not answer {operation}: "
                f"{type(exc).__name__}"
            ) from None
        if answer.status_code >= 400:
            raise LabelStudioApiError(operation, answer.status_code, answer.text)
        if answer.status_code == 204 or not answer.content:
            return None
        return answer.json()

    def whoami(self) -> dict[str, Any]:
        me: dict[str, Any] = self._request("GET", "/api/current-user/whoami", "whoami")
        return me

    # -------------------------------------------------------------- projects
    def find_project(self, title: str) -> dict[str, Any] | None:
        page = 1
        while True:
            body = self._request(
                "GET",
                "/api/projects/",
                "list projects",
                params={"title": title, "page": page, "page_size": 100},
            )
            results = body.get("results", []) if isinstance(body, dict) else body
            matches = [p for p in results if p.get("title") == title]
            if matches:
                return dict(min(matches, key=lambda p: int(p["id"])))
            if not (isinstance(body, dict) and body.get("next")):
                return None
            page += 1

    def get_project(self, project_id: int) -> dict[str, Any]:
        project: dict[str, Any] = self._request(
            "GET", f"/api/projects/{project_id}/", f"get project {project_id}"
        )
        return project

    def create_project(
        self, title: str, label_config: str, *, model_version: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "title": title,
            "label_config": label_config,
            "sampling": SAMPLING,
            "show_skip_button": True,
            "maximum_annotations": 1,
            **QUEUE_SETTINGS,
        }
        if model_version:
            body["model_version"] = model_version
        project: dict[str, Any] = self._request("POST", "/api/projects/", "create project", json=body)
        return project

    def delete_project(self, project_id: int) -> None:
        self._request("DELETE", f"/api/projects/{project_id}/", f"delete project {project_id}")

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        project: dict[str, Any] = self._request(
            "PATCH", f"/api/projects/{project_id}/", f"update project {project_id}", json=fields
        )
        return project

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Show `model_version` as the project's current model (later imports do not switch it)."""
        self.update_project(project_id, model_version=model_version)

    # -------------------------------------------------------------- webhooks
    def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        hooks = self._request("GET", "/api/webhooks/", "list webhooks", params={"project": project_id})
        return [h for h in hooks if h.get("project") == project_id]

    def ensure_webhook(self, project_id: int, url: str, secret: str, secret_header: str) -> tuple[int, bool]:
        """One webhook per (project, url), with our actions and secret header; returns (id, created)."""
        wanted = {
            "url": url,
            "actions": list(WEBHOOK_ACTIONS),
            "headers": {secret_header: secret},
            "send_payload": True,
            "send_for_all_actions": False,
            "is_active": True,
        }
        existing = sorted(
            (h for h in self.list_webhooks(project_id) if h.get("url") == url), key=lambda h: h["id"]
        )
        if not existing:
            hook = self._request(
                "POST", "/api/webhooks/", "create webhook", json={**wanted, "project": project_id}
            )
            return int(hook["id"]), True
        hook = self._keep_oldest(existing, "/api/webhooks/{id}/", "webhook")
        same = (
            sorted(hook.get("actions") or []) == sorted(WEBHOOK_ACTIONS)
            and (hook.get("headers") or {}) == wanted["headers"]
            and hook.get("send_payload") is True
            and hook.get("is_active") is True
        )
        if not same:
            # PATCH always carries `actions`: without them Label Studio silently drops every action.
            self._request(
                "PATCH", f"/api/webhooks/{hook['id']}/", f"update webhook {hook['id']}", json=wanted
            )
        return int(hook["id"]), False

    def _keep_oldest(self, existing: Sequence[dict[str, Any]], path: str, what: str) -> dict[str, Any]:
        """The first of `existing` (sorted oldest first); the others, left over by an interrupted run,
        are deleted (`path` has an ``{id}`` placeholder)."""
        for extra in existing[1:]:
            self._request("DELETE", path.format(id=extra["id"]), f"delete {what} {extra['id']}")
        return dict(existing[0])

    # ----------------------------------------------------------- ML backends
    def list_ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """The ML backends connected to the project, oldest first (passwords are never returned)."""
        body = self._request("GET", "/api/ml", "list ML backends", params={"project": project_id})
        found = [m for m in (body or []) if int(m.get("project") or -1) == project_id]
        return sorted(found, key=lambda m: int(m["id"]))

    def ml_backends_at(self, project_id: int, url: str) -> list[dict[str, Any]]:
        """The project's ML backends registered at `url` (trailing slashes ignored), oldest first."""
        wanted = url.rstrip("/")
        return [m for m in self.list_ml_backends(project_id) if str(m.get("url", "")).rstrip("/") == wanted]

    def ensure_ml_backend(self, project_id: int, spec: MLBackendSpec) -> tuple[int, bool]:
        """One ML backend per (project, url), connected with `spec`'s auth; returns (id, created).

        Label Studio checks the backend's ``/health`` and ``/setup`` when it is created or updated, so
        the serving API must be up; a refusal (unreachable, wrong password) is a `LabelStudioApiError`.
        An existing backend is updated only when what we own differs, or when it is not connected
        (a changed password, or the API was down last time).
        """
        wanted = spec.body()
        existing = self.ml_backends_at(project_id, spec.url)
        if not existing:
            created = self._request(
                "POST", "/api/ml", "connect the ML backend", json={**wanted, "project": project_id}
            )
            return int(created["id"]), True
        backend = self._keep_oldest(existing, "/api/ml/{id}", "ML backend")
        same = all(backend.get(k) == v for k, v in wanted.items() if k != "basic_auth_pass")
        if not same or backend.get("state") != "CO":
            self._request(
                "PATCH",
                f"/api/ml/{backend['id']}",
                f"update ML backend {backend['id']}",
                json={**wanted, "project": project_id},
            )
        return int(backend["id"]), False

    # ----------------------------------------------------------------- tasks
    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import tasks (with predictions) and return their ids, in order."""
        body = self._request(
            "POST",
            f"/api/projects/{project_id}/import",
            f"import {len(tasks)} tasks into project {project_id}",
            params={"return_task_ids": "true"},
            json=list(tasks),
        )
        ids = [int(i) for i in (body or {}).get("task_ids", [])]
        if len(ids) != len(tasks):
            raise LabelingError(
                f"Label Studio returned {len(ids)} task ids for {len(tasks)} imported tasks in project "
                f"{project_id} (an asynchronous import? only synchronous imports are supported)"
            )
        return ids

    def tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, int]:
        """item id -> id of the oldest task in the project whose data names that item and that no
        reviewer has annotated.

        How an import whose answer was lost (a timeout after Label Studio committed it) is found
        again, instead of importing the items a second time. Such a task is new; an annotated one is
        an earlier review's (kept when its item was auto-accepted, `labeling.push`), and taking it
        for the new escalation would hide that escalation from every reviewer."""
        return unreviewed_tasks(self.live_tasks_of_items(project_id, item_ids))

    def task_ids_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, list[int]]:
        """item id -> ids of every task in the project whose data names that item, oldest first
        (an exact match on ``data.item_id``; items without a task are absent)."""
        return {
            item: [task.id for task in tasks]
            for item, tasks in self.live_tasks_of_items(project_id, item_ids).items()
        }

    def live_tasks_of_items(self, project_id: int, item_ids: Sequence[str]) -> dict[str, list[LiveTask]]:
        """As `task_ids_of_items`, each task with whether it holds a reviewer's annotation."""
        found: dict[str, list[LiveTask]] = {}
        for start in range(0, len(item_ids), 50):  # one data-manager filter of 50 alternatives at a time
            chunk = list(item_ids[start : start + 50])
            items = [
                {"filter": "filter:tasks:data.item_id", "operator": "equal", "type": "String", "value": i}
                for i in chunk
            ]
            for task in self._tasks(project_id, {"filters": {"conjunction": "or", "items": items}}):
                item = (task.get("data") or {}).get("item_id")
                if isinstance(item, str) and item in chunk:
                    found.setdefault(item, []).append(LiveTask.of(task))
        return {item: sorted(tasks, key=lambda t: t.id) for item, tasks in found.items()}

    def iter_tasks(
        self, project_id: int, *, annotated_only: bool = False, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """All tasks with their annotations and predictions (`only_annotated` is ignored by the server)."""
        query: dict[str, Any] = {}
        if annotated_only:
            # Tasks with an annotation, cancelled (skipped) ones included: `total_annotations` omits those.
            query["filters"] = {
                "conjunction": "or",
                "items": [
                    {"filter": f"filter:tasks:{column}", "operator": "greater", "type": "Number", "value": 0}
                    for column in ("total_annotations", "cancelled_annotations")
                ],
            }
        yield from self._tasks(project_id, query, page_size=page_size)

    def _tasks(
        self, project_id: int, query: dict[str, Any], *, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every task of the project matching the data-manager `query` (ordered by id), page by page."""
        page = 1
        while True:
            params: dict[str, Any] = {
                "project": project_id,
                "fields": "all",
                "page": page,
                "page_size": page_size,
            }
            if query:
                params["query"] = json.dumps(query)
            try:
                body = self._request(
                    "GET", "/api/tasks/", f"list tasks of project {project_id}", params=params
                )
            except LabelStudioApiError as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or len(tasks) < page_size or (total is not None and page * page_size >= int(total)):
                return
            page += 1

    def predictions_of_task(self, task_id: int) -> list[dict[str, Any]]:
        """Every prediction of a task, whatever its model version (a task listing shows only those of
        the project's current model version)."""
        body = self._request(
            "GET", "/api/predictions/", f"list predictions of task {task_id}", params={"task": task_id}
        )
        return [p for p in body if isinstance(p, dict)] if isinstance(body, list) else []

    def create_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> int:
        """Add a prediction (``model_version``, ``score``, ``result``) to a task; returns its id."""
        body = self._request(
            "POST",
            "/api/predictions/",
            f"add a prediction to task {task_id}",
            json={**prediction, "task": task_id},
        )
        return int(body["id"])

    def update_task(self, task_id: int, *, data: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Replace a task's data (what the reviewer sees) and meta."""
        self._request(
            "PATCH",
            f"/api/tasks/{task_id}/",
            f"update task {task_id}",
            json={"data": dict(data), "meta": dict(meta)},
        )

    def _found(self, method: str, path: str, operation: str) -> bool:
        """`_request`, answering False where Label Studio answers 404 (the object is not there)."""
        try:
            self._request(method, path, operation)
        except LabelStudioApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def delete_task(self, task_id: int) -> bool:
        """Delete a task; False when it was already gone (404), so a retried delete is harmless."""
        return self._found("DELETE", f"/api/tasks/{task_id}/", f"delete task {task_id}")

    def hold_task(
        self, task_id: int, *, hold: bool, item_id: str | None = None, project_id: int | None = None
    ) -> int | None:
        """Keep a task in the labeling queue for one more annotator (``hold``), or let its annotations
        so far finish it; returns the task's new ``overlap``, or None (nothing changed) when the task no
        longer holds `item_id` or is not in `project_id`, when given (its id went to another task).

        Label Studio finishes a task (``is_labeled``) once as many distinct users annotated it as its
        ``overlap``; it then leaves everyone's queue, and the queue never serves a task to a user who
        annotated it already. Holding sets overlap to the annotators so far + 1.
        """
        task = self.get_task(task_id)
        if item_id is not None and (task.get("data") or {}).get("item_id") != item_id:
            return None
        if project_id is not None and task.get("project") != project_id:
            return None
        annotators = {
            _user_id(a.get("completed_by"))
            for a in task.get("annotations") or []
            if isinstance(a, dict) and not a.get("was_cancelled")
        }
        done = len(annotators - {None})
        overlap = done + 1 if hold else max(done, 1)
        self._request(
            "PATCH",
            f"/api/tasks/{task_id}/",
            f"{'hold' if hold else 'release'} task {task_id}",
            json={"overlap": overlap, "is_labeled": done >= overlap},
        )
        return overlap

    def get_task(self, task_id: int) -> dict[str, Any]:
        task: dict[str, Any] = self._request("GET", f"/api/tasks/{task_id}/", f"get task {task_id}")
        return task

    def next_task(self, project_id: int) -> dict[str, Any] | None:
        """The task Label Studio serves this user next ("Label All Tasks"), in the project's sampling
        order; None when the queue is empty (Label Studio answers 404)."""
        try:
            task: dict[str, Any] = self._request(
                "GET", f"/api/projects/{project_id}/next", "get the next task"
            )
        except LabelStudioApiError as exc:
            if exc.status == 404:
                return None
            raise
        return task

    # ----------------------------------------------------------- annotations
    def create_annotation(
        self,
        task_id: int,
        result: Sequence[Mapping[str, Any]],
        *,
        lead_time: float | None = None,
        was_cancelled: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"result": list(result), "was_cancelled": was_cancelled}
        if lead_time is not None:
            body["lead_time"] = lead_time
        annotation: dict[str, Any] = self._request(
            "POST", f"/api/tasks/{task_id}/annotations/", f"annotate task {task_id}", json=body
        )
        return annotation

    def update_annotation(self, annotation_id: int, result: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        annotation: dict[str, Any] = self._request(
            "PATCH",
            f"/api/annotations/{annotation_id}/",
            f"update annotation {annotation_id}",
            json={"result": list(result)},
        )
        return annotation

    def delete_annotation(self, annotation_id: int) -> None:
        self._request("DELETE", f"/api/annotations/{annotation_id}/", f"delete annotation {annotation_id}")

    def annotation_exists(self, annotation_id: int) -> bool:
        """Whether Label Studio still holds the annotation (False only on its 404)."""
        return self._found("GET", f"/api/annotations/{annotation_id}/", f"read annotation {annotation_id}")

    # ----------------------------------------------------------------- users
    def user_emails(self) -> dict[int, str]:
        """Every user of the organization: id -> email."""
        body = self._request("GET", "/api/users/", "list users")
        users = body.get("results", []) if isinstance(body, dict) else body or []
        return {int(u["id"]): str(u.get("email") or "") for u in users if isinstance(u, dict) and "id" in u}

    def invite_token(self) -> str:
        body = self._request("GET", "/api/invite", "get the organization invite")
        return str(body["token"])

    def ensure_reviewer(self, email: str, password: str) -> ReviewerAccount:
        """Sign up (through the organization's invite link) or log in `email`, and return its API token.

        Open-source Label Studio has no admin API that hands out another user's token, so this goes
        through the same forms a merchandiser would use.
        """
        invite = self.invite_token()
        with httpx.Client(base_url=self.base_url, timeout=self._http.timeout, follow_redirects=False) as web:
            if not _form_login(web, "/user/login/", email, password):
                signed = _form_post(
                    web, f"/user/signup/?token={invite}", {"email": email, "password": password}
                )
                if signed.status_code not in (301, 302) or not _logged_in(web):
                    raise LabelStudioApiError(
                        f"sign up reviewer {email}", signed.status_code, _form_errors(signed)
                    )
            try:
                token = web.get("/api/current-user/token").json()["token"]
                me = web.get("/api/current-user/whoami").json()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise LabelStudioUnavailableError(
                    f"could not read the token of reviewer {email}: {exc}"
                ) from None
        return ReviewerAccount(user_id=int(me["id"]), email=email, token=str(token))


def _user_id(user: Any) -> Any:
    # The tasks API may expand a user to an object.
    return user.get("id") if isinstance(user, Mapping) else user


def _csrf(web: httpx.Client, path: str) -> str:
    web.get(path)
    return str(web.cookies.get("csrftoken", ""))


def _form_post(web: httpx.Client, path: str, fields: Mapping[str, str]) -> httpx.Response:
    token = _csrf(web, path)
    return web.post(
        path,
        data={**fields, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{web.base_url}{path}", "X-CSRFToken": token},
    )


def _logged_in(web: httpx.Client) -> bool:
    return web.get("/api/current-user/whoami").status_code == 200


def _form_login(web: httpx.Client, path: str, email: str, password: str) -> bool:
    answer = _form_post(web, path, {"email": email, "password": password})
    return answer.status_code in (301, 302) and _logged_in(web)


def _form_errors(answer: httpx.Response) -> str:
    errors = re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]{3,200})<', answer.text)
    return "; ".join(e.strip() for e in errors[:3]) or f"unexpected answer ({len(answer.content)} bytes)"


Outcome = Literal["created", "unchanged", "updated"]
