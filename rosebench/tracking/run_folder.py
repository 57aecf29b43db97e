"""Reading a run folder (results.json, .hydra/, tracking.json) without MLflow: for logging and reports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from rosebench.files import write_atomic
from rosebench.results import RESULTS_FILE, RunInfo, RunResults

TRACKING_RECORD = "tracking.json"


@dataclass
class TrackingRecord:
    """`tracking.json`: whether, where and as what a run folder was logged."""

    logged: bool = False
    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    error: str | None = None
    url: str | None = None  # the runs table the run is in (no credentials)

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / TRACKING_RECORD, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> TrackingRecord | None:
        path = run_dir / TRACKING_RECORD
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def is_run_folder(path: Path) -> bool:
    """A Hydra job folder: results.json, or at least Hydra's config when the run died early."""
    return (path / RESULTS_FILE).is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_run_folders(root: Path) -> list[Path]:
    """Every run folder at or below `root` (a sweep's job folders)."""
    marks = [*root.rglob(RESULTS_FILE), *root.rglob(".hydra/config.yaml")]
    dirs = {m.parent if m.name == RESULTS_FILE else m.parent.parent for m in marks}
    return sorted(d for d in dirs if is_run_folder(d))


def read_results(run_dir: Path) -> tuple[RunResults | None, str | None]:
    """The folder's results.json, or None and why it cannot be read (missing, empty, truncated, not ours)."""
    try:
        return RunResults.read(run_dir), None
    except FileNotFoundError:
        return None, f"{run_dir / RESULTS_FILE}: missing (the run ended before writing it)"
    except (OSError, ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        return None, f"{run_dir / RESULTS_FILE}: damaged ({type(error).__name__}: {error})"


def read_run(run_dir: Path) -> RunResults:
    """results.json; when it is missing or damaged, a FAILED run with the config from .hydra, so that
    what is readable still logs."""
    results, _ = read_results(run_dir)
    if results is not None:
        return results
    hydra_config = run_dir / ".hydra" / "config.yaml"
    config = (yaml.safe_load(hydra_config.read_text()) or {}) if hydra_config.is_file() else {}
    return RunResults(config=config, environment={}, run=RunInfo(name=run_dir.name, status="FAILED"))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to `a.b.c` keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def param_text(value: Any) -> str:
    """How a config value is shown as a param (MLflow's, and in reports that compare runs)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    return {key: param_text(value) for key, value in flatten(config).items()}
