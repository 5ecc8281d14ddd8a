"""label-studio-sdk vs our httpx client (`labeling.client`), measured (issue #14 item 5).

    .venv/bin/python -m experiments.bench_ls_client [--url http://127.0.0.1:8081] [--project 1]

Against a running Label Studio (the one `make up` started; token from the settings), in fresh
subprocesses so that imports are cold:

- ``import_s`` / ``import_rss_mb``: what importing each client costs a process that already has what
  it would have anyway: the CLI (``hitl.cli``, ``labeling.client``) and the serving app
  (``serving.app``, which brings mlflow and torch);
- ``list_tasks_s``: reading every task of the project with all fields (what sync and the outbox's
  reconciliation do), median of 3, through each client;
- ``covers``: the Label Studio endpoints the product uses and whether SDK 2.1.2 has a method for them.

Writes ``experiments/results/bench_ls_client.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from experiments.figures import save_with_command

COMMAND = ".venv/bin/python -m experiments.bench_ls_client"

_IMPORT = """
import resource, time, json
{context}
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
{target}
print(json.dumps({{"import_s": time.perf_counter() - t,
                  "import_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024}}))
"""
CONTEXTS = {"cli": "import hitl.cli, typer, rich", "serving": "import serving.app, mlflow.pyfunc, torch"}
TARGETS = {
    "httpx_client": "import labeling.client",
    "sdk": "from label_studio_sdk import LabelStudio; LabelStudio(base_url='http://x', api_key='y').tasks",
}

_LIST = """
import json, os, statistics, sys, time
url, project, token = sys.argv[1], int(sys.argv[2]), os.environ["HITL_BENCH_LS_TOKEN"]
times, count = [], 0
for _ in range(3):
    t = time.perf_counter()
    {body}
    times.append(time.perf_counter() - t)
print(json.dumps({{"list_tasks_s": statistics.median(times), "tasks": count}}))
"""
LISTS = {
    "httpx_client": """from labeling.client import LabelStudioClient
    with LabelStudioClient(url, token) as c:
        count = sum(1 for _ in c.iter_tasks(project))""",
    "sdk": """from label_studio_sdk import LabelStudio
    sdk = LabelStudio(base_url=url, api_key=token)
    count = sum(1 for _ in sdk.tasks.list(project=project, fields="all"))""",
}

# The endpoints the product uses (labeling.client) -> the SDK 2.1.2 method, None = not in the SDK.
COVERS: dict[str, str | None] = {
    "GET /api/projects/{id}/next (the queue a merchandiser is served)": None,
    "POST /user/signup + /user/login forms (a reviewer's account and token)": None,
    "GET /api/current-user/whoami": "users.whoami",
    "POST|PATCH /api/projects/": "projects.create / projects.update",
    "POST /api/projects/{id}/import": "projects.import_tasks",
    "GET /api/tasks/?fields=all": "tasks.list",
    "PATCH|DELETE /api/tasks/{id}/": "tasks.update / tasks.delete",
    "POST /api/predictions/": "predictions.create",
    "POST /api/tasks/{id}/annotations/": "annotations.create",
    "GET|POST|PATCH /api/webhooks/": "webhooks.list / create / update",
    "GET|POST|PATCH /api/ml": "ml.list / create / update",
    "GET /api/users/": "users.list",
    "GET /api/invite": "organizations.invites (enterprise-shaped)",
}


def _run(code: str, *args: str, token: str | None = None) -> dict[str, Any]:
    # The token travels in the environment: a command line is readable by every local user (ps).
    secret = {} if token is None else {"HITL_BENCH_LS_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"HF_HUB_OFFLINE": "1"} | secret,
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    names = list(TARGETS)
    for ax, (metric, title) in zip(
        axes,
        [("import_rss_mb", "import: extra memory (MB)"), ("import_s", "import: seconds")],
        strict=False,
    ):
        for i, context in enumerate(CONTEXTS):
            values = [result["imports"][context][n][metric] for n in names]
            ax.bar([j + 0.4 * i for j in range(len(names))], values, width=0.4, label=f"in the {context}")
        ax.set_xticks([j + 0.2 for j in range(len(names))], names)
        ax.set_title(title)
        ax.legend(fontsize=8)
    lists = result["list_tasks"]
    axes[2].bar(names, [lists[n]["list_tasks_s"] for n in names])
    axes[2].set_title(f"read {lists[names[0]]['tasks']} tasks (s, median of 3)")
    save_with_command(fig, path, COMMAND, footer=0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8081")
    parser.add_argument("--project", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args(argv)
    # From the settings (HITL_LABELSTUDIO__TOKEN), never a flag: a command line is visible to `ps`.
    from hitl.settings import load_settings

    token = load_settings().labelstudio.token.get_secret_value()

    imports = {
        context: {
            name: _run(_IMPORT.format(context=setup, target=target)) for name, target in TARGETS.items()
        }
        for context, setup in CONTEXTS.items()
    }
    where = (args.url, str(args.project))
    lists = {name: _run(_LIST.format(body=body), *where, token=token) for name, body in LISTS.items()}
    if len({v["tasks"] for v in lists.values()}) != 1:
        raise SystemExit(f"the two clients read different task counts: {lists}")
    result = {
        "command": COMMAND,
        "cpu_count": os.cpu_count(),
        "imports": imports,
        "list_tasks": lists,
        "covers": COVERS,
        "sdk_missing": [endpoint for endpoint, method in COVERS.items() if method is None],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ls_client.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "bench_ls_client.png")
    print(json.dumps({k: result[k] for k in ("imports", "list_tasks")}, indent=1))


if __name__ == "__main__":
    main()
