"""The arrows point down (ARCHITECTURE.md): `hitl` -> `serving` -> `labeling`, `learner`; nothing below
`hitl` imports it, `learner` imports no web, Label Studio or MLflow code, and only `labeling` speaks to
Label Studio. Read from the source (every import statement, top-level or inside a function), so a lazy
import cannot hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# package -> top-level modules it may not import
FORBIDDEN = {
    "learner": {"hitl", "serving", "labeling", "experiments", "fastapi", "starlette", "httpx", "mlflow",
                "label_studio_sdk", "sqlalchemy", "uvicorn"},
    "labeling": {"hitl", "serving", "experiments", "fastapi", "mlflow", "sqlalchemy"},
    "serving": {"hitl", "experiments", "label_studio_sdk"},
}  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_upward_or_outside_its_room(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {p: bad for p, bad in offenders.items() if bad} == {}


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from hitl.settings import Settings\n    import mlflow.pyfunc\n")
    assert imported_roots(module) == {"hitl", "mlflow"}
