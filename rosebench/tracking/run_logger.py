"""Turn a run folder (results.json, outputs, .hydra, profile) into an MLflow run, live or after the fact."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from rosebench.tracking.settings import TrackingSettings
from rosebench.tracking.store import (
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)

RESULTS = "results.json"
TRACKING_RECORD = "tracking.json"
# Per-pass values get their own keys: under the aggregate's key, the last pass would be the "latest" value
# that the runs table shows.
PASS_PREFIX = "pass/"
PROFILE_PREFIX = "profile/"
STD_SUFFIX = "_std"


class TrackingWarning(UserWarning):
    """Something was not logged to MLflow; the benchmark's results are still on disk."""


@dataclass
class TrackingRecord:
    """`tracking.json`: whether, where and as what a run folder was logged."""

    logged: bool = False
    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    error: str | None = None

    def write(self, run_dir: Path) -> None:
        (run_dir / TRACKING_RECORD).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> TrackingRecord | None:
        path = run_dir / TRACKING_RECORD
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def is_run_folder(path: Path) -> bool:
    """A Hydra job folder: results.json, or at least Hydra's config when the run died early."""
    return (path / RESULTS).is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_run_folders(root: Path) -> list[Path]:
    """Every run folder at or below `root` (a sweep's job folders)."""
    marks = [*root.rglob(RESULTS), *root.rglob(".hydra/config.yaml")]
    dirs = {m.parent if m.name == RESULTS else m.parent.parent for m in marks}
    return sorted(d for d in dirs if is_run_folder(d))


def read_results(run_dir: Path) -> dict[str, Any]:
    """results.json; without it (run killed early) the config from .hydra, so that params still log."""
    path = run_dir / RESULTS
    if path.is_file():
        return json.loads(path.read_text())
    hydra_config = run_dir / ".hydra" / "config.yaml"
    return {"config": yaml.safe_load(hydra_config.read_text()) or {}} if hydra_config.is_file() else {}


def run_status(results: Mapping[str, Any]) -> str:
    """The run's end status; a folder without results did not finish."""
    return results.get("run", {}).get("status") or "FAILED"


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


def param_value(value: Any) -> str:
    """How a config value is shown as an MLflow param (also used to compare runs in reports)."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    return {k: param_value(v) for k, v in flatten(config).items() if len(k) <= MAX_ENTITY_KEY_LENGTH}


def _metrics(results: Mapping[str, Any]) -> list[Metric]:
    now = int(time.time() * 1000)
    values: list[tuple[str, Any, int]] = [(k, v, 0) for k, v in results.get("metrics", {}).items()]
    values += [(f"{k}{STD_SUFFIX}", v, 0) for k, v in results.get("metrics_std", {}).items()]
    for step, one_pass in enumerate(results.get("passes", [])):
        values += [(f"{PASS_PREFIX}{k}", v, step) for k, v in one_pass.items()]
    profile = results.get("profile") or {}
    values += [(f"{PROFILE_PREFIX}{k}", v, 0) for k, v in profile.get("metrics", {}).items()]
    # Counts and figures only: None (a percentile of nothing) or text cannot be a metric.
    return [Metric(k, float(v), now, step) for k, v, step in values if isinstance(v, (int, float))]


def _tags(results: Mapping[str, Any], run_dir: Path) -> dict[str, str]:
    env = results.get("environment", {})
    run = results.get("run", {})
    tags = {
        "mode": run.get("mode"),
        "profiled": "yes" if run.get("profiled") else "no",
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "cpu": env.get("cpu"),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "python": env.get("python"),
        "hostname": env.get("hostname"),
        "rosebench_version": env.get("rosebench"),
        "git_commit": env.get("git_commit"),
        MLFLOW_GIT_COMMIT: env.get("git_commit"),
        "hydra_job_name": run.get("job_name"),
        "hydra_job_id": run.get("job_id"),
        "hydra_job_num": run.get("job_num"),
        "hydra_overrides": json.dumps(run["overrides"]) if "overrides" in run else None,
        "sweep_dir": run.get("sweep_dir"),
        "run_dir": str(run_dir.resolve()),
    }
    return {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items() if v is not None}


def _log_artifacts(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    for name in (RESULTS, "outputs.jsonl"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for job_log in sorted(run_dir.glob("*.log")):
        client.log_artifact(run_id, str(job_log))
    for folder, artifact_path in ((".hydra", "hydra"), ("profile", "profile")):
        if (run_dir / folder).is_dir():
            client.log_artifacts(run_id, str(run_dir / folder), artifact_path=artifact_path)


def _log_into(
    client: MlflowClient, run_id: str, run_dir: Path, results: Mapping[str, Any], artifacts: bool
) -> None:
    # One batch for params, metrics and tags: through a server every call costs a round trip.
    client.log_batch(
        run_id,
        metrics=_metrics(results),
        params=[Param(k, v) for k, v in config_params(results.get("config", {})).items()],
        tags=[RunTag(k, v) for k, v in _tags(results, run_dir).items()],
    )
    if artifacts:
        _log_artifacts(client, run_id, run_dir)


def _epoch_ms(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


def log_run_folder(
    run_dir: Path,
    settings: TrackingSettings,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    *,
    run_id: str | None = None,
) -> str:
    """Log everything in `run_dir` and return the run id.

    Without `run_id` a new run is created (a child of `parent_run_id` if given) with the folder's
    name, times and end status. With `run_id`, the folder is logged into that live run, whose owner ends it.
    """
    run_dir = Path(run_dir)
    uri = resolve_tracking_uri(settings.uri)
    client = connect(uri)
    results = read_results(run_dir)
    if run_id is not None:
        _log_into(client, run_id, run_dir, results, settings.artifacts)
        return run_id
    run_info = results.get("run", {})
    run = client.create_run(
        experiment_id or get_or_create_experiment(client, settings.experiment, uri),
        start_time=_epoch_ms(run_info.get("started_at")),
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else None,
        run_name=run_info.get("name") or run_dir.name,
    )
    new_id = run.info.run_id
    try:
        _log_into(client, new_id, run_dir, results, settings.artifacts)
    except BaseException:
        client.set_terminated(new_id, "FAILED")  # not left RUNNING; the upload can be retried with --force
        raise
    client.set_terminated(new_id, run_status(results), end_time=_epoch_ms(run_info.get("ended_at")))
    return new_id


def describe_error(error: BaseException) -> str:
    """`Type: message` on one line; a long message keeps its head and its tail (where the cause is)."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = f"{text[:120]} ... {text[-170:]}"
    return f"{type(error).__name__}: {text}"


class TrackedRun:
    """The MLflow run around one benchmark.

    `start()` opens the run (a sweep job nests it under the parent named in the sweep's hand-off file);
    `finish()` logs the run folder, ends the run and writes `tracking.json`. As a context manager an
    exception ends the run FAILED and Ctrl-C ends it KILLED, and the exception propagates. A store that
    cannot be reached only costs a warning: the results stay in the folder for `rosebench.upload`.
    """

    def __init__(self, settings: Any, run_dir: Path, run_name: str, sweep_dir: Path | None = None) -> None:
        self.settings = TrackingSettings.of(settings)
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
        self.record = TrackingRecord()

    def __enter__(self) -> TrackedRun:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def start(self) -> None:
        if not self.settings.enabled:
            return
        try:
            self._start()
        except Exception as error:
            self._warn("start", "this run will not be logged", error)

    def _start(self) -> None:
        handoff = SweepHandoff.read(self.sweep_dir) if self.sweep_dir is not None else None
        uri = handoff.tracking_uri if handoff else resolve_tracking_uri(self.settings.uri)
        self.record.tracking_uri = uri
        client = connect(uri)
        if handoff:
            experiment_id = handoff.experiment_id
        else:
            experiment_id = get_or_create_experiment(client, self.settings.experiment, uri)
        # The fluent run is needed for system metrics, whose monitor logs through the global tracking URI.
        mlflow.set_tracking_uri(uri)
        if self.settings.system_metrics:
            mlflow.set_system_metrics_sampling_interval(1)  # the 10 s default records nothing for short runs
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=self.run_name,
            parent_run_id=handoff.parent_run_id if handoff else None,
            log_system_metrics=self.settings.system_metrics,
        )
        self.record = TrackingRecord(tracking_uri=uri, experiment_id=experiment_id, run_id=run.info.run_id)

    def finish(self, status: str | None = None) -> TrackingRecord:
        """Log the folder and end the run with `status` (default: results.json's); write tracking.json."""
        try:
            if self.record.run_id is not None:
                self._log_and_end(self.record.run_id, status)
        finally:
            if self.run_dir.is_dir():  # never mask the benchmark's own error with ours
                self.record.write(self.run_dir)
        return self.record

    def _log_and_end(self, run_id: str, status: str | None) -> None:
        uri = self.record.tracking_uri or ""
        try:
            log_run_folder(self.run_dir, replace(self.settings, uri=uri), run_id=run_id)
            mlflow.end_run(status or run_status(read_results(self.run_dir)))
        except KeyboardInterrupt:
            self._end_quietly("KILLED")
            raise
        except Exception as error:
            self._end_quietly("FAILED")
            self._warn("finish", "the run is incomplete in MLflow", error)
            return
        self.record.logged = True

    def _end_quietly(self, status: str) -> None:
        try:
            mlflow.end_run(status)
        except Exception as error:  # the store is what failed; the active-run stack is popped regardless
            log.debug("could not end MLflow run: %s", error)

    def _warn(self, stage: str, consequence: str, error: Exception) -> None:
        self.record.error = f"{stage}: {describe_error(error)}"
        warnings.warn(
            f"MLflow tracking failed at {stage} ({describe_error(error)}); {consequence}. Results are kept "
            f"in {self.run_dir}; log them later with: python -m rosebench.upload {self.run_dir}",
            TrackingWarning,
            stacklevel=3,
        )
