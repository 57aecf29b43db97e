"""Log a run folder (results.json, outputs, .hydra, profile) into an MLflow run, live or after the fact."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from rosebench.results import RESULTS_FILE, RunResults
from rosebench.tracking.run_folder import config_params, read_run
from rosebench.tracking.settings import TrackingSettings
from rosebench.tracking.store import connect, get_or_create_experiment, resolve_tracking_uri

# Per-pass values get their own keys: under the aggregate's key, the last pass would be the "latest" value
# that the runs table shows.
PASS_PREFIX = "pass/"
PROFILE_PREFIX = "profile/"
STD_SUFFIX = "_std"
RUN_DIR_TAG = "run_dir"  # the run folder a run was logged from, set as the run starts


def describe_error(error: BaseException) -> str:
    """`Type: message` on one line; a long message keeps its head and its tail (where the cause is)."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = f"{text[:120]} ... {text[-170:]}"
    return f"{type(error).__name__}: {text}"


def mlflow_params(results: RunResults) -> list[Param]:
    params = {**config_params(results.config), **config_params({"model": results.model})}
    return [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items() if len(k) <= MAX_ENTITY_KEY_LENGTH]


def mlflow_metrics(results: RunResults) -> list[Metric]:
    now = int(time.time() * 1000)
    values = [(k, v, 0) for k, v in results.metrics.items()]
    values += [(f"{k}{STD_SUFFIX}", v, 0) for k, v in results.metrics_std.items()]
    for step, one_pass in enumerate(results.passes):
        values += [(f"{PASS_PREFIX}{k}", v, step) for k, v in one_pass.items()]
    if results.profile is not None:
        values += [(f"{PROFILE_PREFIX}{k}", v, 0) for k, v in results.profile.summary.metrics().items()]
    # Counts and figures only: None (a percentile of nothing) or text cannot be a metric.
    return [Metric(k, float(v), now, step) for k, v, step in values if isinstance(v, (int, float))]


def mlflow_tags(results: RunResults, run_dir: Path) -> dict[str, str]:
    env, run = results.environment, results.run
    tags = {
        "mode": run.mode,
        "model": results.model.get("label"),
        "profiled": "yes" if run.profiled else "no",
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "cpu": env.get("cpu"),
        "cpu_capability": _cpu_capability(env),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "python": env.get("python"),
        "hostname": env.get("hostname"),
        "rosebench_version": env.get("rosebench"),
        "git_commit": env.get("git_commit"),
        MLFLOW_GIT_COMMIT: env.get("git_commit"),
        "hydra_job_name": run.job_name,
        "hydra_job_id": run.job_id,
        "hydra_job_num": run.job_num,
        "hydra_overrides": json.dumps(run.overrides),
        "sweep_dir": run.sweep_dir,
        RUN_DIR_TAG: str(run_dir.resolve()),
    }
    return {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items() if v is not None}


def _cpu_capability(env: dict) -> str | None:
    """``AVX2``, or ``AVX512 amx_bf16 avx512_bf16``: whether bf16 can be fast where the run ran."""
    if not env.get("cpu_capability"):  # results.json from before it was recorded
        return None
    return " ".join([env["cpu_capability"], *env.get("cpu_bf16_matrix_units", [])])


def _log_artifacts(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    for name in (RESULTS_FILE, "outputs.jsonl"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for job_log in sorted(run_dir.glob("*.log")):
        client.log_artifact(run_id, str(job_log))
    for folder, artifact_path in ((".hydra", "hydra"), ("profile", "profile")):
        if (run_dir / folder).is_dir():
            client.log_artifacts(run_id, str(run_dir / folder), artifact_path=artifact_path)


def _log_into(client: MlflowClient, run_id: str, run_dir: Path, results: RunResults, artifacts: bool) -> None:
    # One batch for params, metrics and tags: through a server every call costs a round trip.
    client.log_batch(
        run_id,
        metrics=mlflow_metrics(results),
        params=mlflow_params(results),
        tags=[RunTag(k, v) for k, v in mlflow_tags(results, run_dir).items()],
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
    results: RunResults | None = None,
) -> str:
    """Log everything in `run_dir` and return the run id.

    Without `run_id` a new run is created (a child of `parent_run_id` if given) with the folder's
    name, times and end status. With `run_id`, the folder is logged into that live run, whose owner ends it.
    Params, metrics and tags come from `results` when given (the runner's, in memory: a full disk may have
    kept results.json from being written), else from the folder's results.json; artifacts from the folder.
    """
    run_dir = Path(run_dir)
    uri = resolve_tracking_uri(settings.uri)
    client = connect(uri)
    results = results or read_run(run_dir)
    if run_id is not None:
        _log_into(client, run_id, run_dir, results, settings.artifacts)
        return run_id
    run = client.create_run(
        experiment_id or get_or_create_experiment(client, settings.experiment, uri),
        start_time=_epoch_ms(results.run.started_at),
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else None,
        run_name=results.run.name,
    )
    new_id = run.info.run_id
    try:
        _log_into(client, new_id, run_dir, results, settings.artifacts)
    except BaseException:
        client.set_terminated(new_id, "FAILED")  # not left RUNNING; the upload can be retried with --force
        raise
    client.set_terminated(new_id, results.status, end_time=_epoch_ms(results.run.ended_at))
    return new_id
