"""The import rules of the house, read from the source: nothing flows back up.

CLIs (``__main__``, ``report``, ``upload``, ``compare``) are leaves; the runner is imported only by
``__main__``; the engine knows nothing of Hydra, MLflow or the layers above it; tracking reads results,
never the engine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rosebench"
LEAVES = ("rosebench.__main__", "rosebench.report", "rosebench.upload", "rosebench.compare")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(*subpackages: str) -> list[Path]:
    return [p for sub in subpackages for p in sorted((PACKAGE / sub).rglob("*.py"))]


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(i for i in imports_of(path) if i == forbidden or i.startswith(forbidden))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_nothing_imports_the_clis() -> None:
    every = sorted(PACKAGE.rglob("*.py"))
    assert offending(every, LEAVES) == {}


@pytest.mark.parametrize("package", ["engine", "scheduler", "workload", "profiling", "tracking"])
def test_lower_layers_do_not_import_the_runner(package: str) -> None:
    assert offending(modules(package), ("rosebench.runner",)) == {}


def test_engine_knows_nothing_above_it() -> None:
    forbidden = (
        "hydra",
        "omegaconf",
        "mlflow",
        "rosebench.scheduler",
        "rosebench.workload",
        "rosebench.tracking",
        "rosebench.config",
        "rosebench.results",
        "rosebench.profiling",
    )
    assert offending(modules("engine"), forbidden) == {}


def test_scheduler_knows_only_the_engine() -> None:
    forbidden = (
        "hydra",
        "omegaconf",
        "mlflow",
        "rosebench.tracking",
        "rosebench.config",
        "rosebench.profiling",
    )
    assert offending(modules("scheduler"), forbidden) == {}


def test_tracking_never_reads_the_engine() -> None:
    forbidden = ("torch", "rosebench.engine", "rosebench.scheduler", "rosebench.runner")
    assert offending(modules("tracking"), forbidden) == {}


def test_comparison_needs_neither_torch_nor_mlflow():
    """Comparing two results.json files must work where neither is installed (a CI box, a laptop)."""
    assert offending([PACKAGE / "comparison.py"], ("torch", "mlflow")) == {}


def test_the_server_is_a_leaf_beside_the_runner() -> None:
    """Nothing outside ``rosebench.serve`` imports it (the runner starts it as a process and talks HTTP),
    and it uses the engine and scheduler as the runner does, never the runner, the client or MLflow."""
    outside = [p for p in PACKAGE.rglob("*.py") if "serve" not in p.relative_to(PACKAGE).parts]
    assert offending(outside, ("rosebench.serve",)) == {}
    assert offending(modules("serve"), ("rosebench.runner", "rosebench.target", "mlflow")) == {}


def test_the_http_client_never_imports_the_server() -> None:
    assert offending(modules("target"), ("rosebench.serve", "mlflow")) == {}
