"""Log a run folder (results.json, outputs, .hydra, profile) into an MLflow run, live or after the fact."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from rosebench.results import ERRORS_FILE, HEADLINE_METRICS, OUTPUTS_FILE, RESULTS_FILE, RunResults
from rosebench.tracking.run_folder import config_params, flatten, read_run
from rosebench.tracking.settings import TrackingSettings
from rosebench.tracking.store import SWEEP_ORDER_TAG, connect, get_or_create_experiment, resolve_tracking_uri

RUN_DIR_TAG = "run_dir"  # the run folder a run was logged from, set as the run starts
FIGURES_TABLE = "figures.json"  # every figure: mean, standard deviation and each timed pass
PROFILE_PREFIX = "profile/"  # profile figures' rows in that table, and their metrics' names
# The trace summary's headline, logged as metrics of a profiled run so that sweeps compare them.
PROFILE_METRICS = ("cpu_ops_per_decode_step", "kernels_per_decode_step", "device_idle_fraction")
SIGNIFICANT_DIGITS = 4  # passes differ by 1% or more here: further digits are noise
# Keys that shape only online runs, and only sampled (temperature > 0) runs.
_ONLINE_ONLY = ("scheduler.request_rate", "scheduler.burstiness", "scheduler.max_concurrency")
_SAMPLED_ONLY = ("sampling.top_k", "sampling.top_p", "sampling.seed")


def rounded(value: float) -> float:
    """`value` to SIGNIFICANT_DIGITS: what a benchmark figure supports."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else value


def shaping_params(results: RunResults) -> dict[str, str]:
    """The config and model keys that shaped this run, as text.

    Left out: unset (None) values, where results went (`tracking.*`), the profiler's settings when it did
    not run, the arrival process of an offline run, and top-k/top-p/seed of greedy decoding.
    """
    config = results.config
    unused = ["tracking.", "model.short"]
    if not config.get("profile", {}).get("enabled"):
        unused += [k for k in flatten({"profile": config.get("profile", {})}) if k != "profile.enabled"]
    if config.get("mode") != "online":
        unused += _ONLINE_ONLY
    if not config.get("sampling", {}).get("temperature"):
        unused += _SAMPLED_ONLY
    params = {**config_params(config), **config_params({"model": results.model})}
    return {
        key: value
        for key, value in params.items()
        if value != "None" and not key.startswith(tuple(unused)) and len(key) <= MAX_ENTITY_KEY_LENGTH
    }


# Beside the headline figures: how busy the machine was, to tell a slow engine from a busy machine.
CONDITION_METRICS = ("contention_max",)


def mlflow_metrics(results: RunResults) -> list[Metric]:
    """The headline figures, the run's conditions and a profiled run's trace headline
    (``profile/cpu_ops_per_decode_step``, ...), rounded; the rest are in the figures table
    (`figures_table`)."""
    now = int(time.time() * 1000)
    figures = {key: results.metrics.get(key) for key in (*HEADLINE_METRICS, *CONDITION_METRICS)}
    if results.profile is not None:
        summary = results.profile.summary.metrics()
        figures |= {f"{PROFILE_PREFIX}{key}": summary.get(key) for key in PROFILE_METRICS}
    return [
        Metric(key, rounded(float(value)), now, 0)
        for key, value in figures.items()
        if isinstance(value, (int, float))
    ]


def profile_note(results: RunResults) -> str | None:
    """The run's description (MLflow's ``mlflow.note.content``) when it was profiled: where its trace is and
    how to look at it (MLflow's artifact viewer cannot open a trace), then the trace summary."""
    if results.profile is None:
        return None
    traces = ", ".join(f"`{path}`" for path in results.profile.traces) or "none was written"
    return (
        "Profiled: one untimed pass after the timed ones, under torch.profiler. Its Chrome trace: "
        f"{traces} (Artifacts). Download it and open it in https://ui.perfetto.dev (or chrome://tracing).\n\n"
        f"```\n{results.profile.summary.format()}\n```"
    )


def figures_table(results: RunResults) -> dict[str, list]:
    """Every figure as a row: its mean, standard deviation and each timed pass (the profile's, one value)."""
    names = [k for k, v in results.metrics.items() if isinstance(v, (int, float))]
    columns: dict[str, list] = {
        "metric": names,
        "mean": [rounded(float(results.metrics[k])) for k in names],
        "std": [_maybe_rounded(results.metrics_std.get(k)) for k in names],
    }
    for number, one_pass in enumerate(results.passes, start=1):
        columns[f"pass {number}"] = [_maybe_rounded(one_pass.get(k)) for k in names]
    if results.profile is not None:
        profile = {k: v for k, v in results.profile.summary.metrics().items() if isinstance(v, (int, float))}
        columns["metric"] += [f"{PROFILE_PREFIX}{k}" for k in profile]
        columns["mean"] += [rounded(float(v)) for v in profile.values()]
        for name in [c for c in columns if c not in ("metric", "mean")]:
            columns[name] += [None] * len(profile)
    return columns


def _maybe_rounded(value: float | None) -> float | None:
    return rounded(float(value)) if isinstance(value, (int, float)) else None


def mlflow_tags(results: RunResults, run_dir: Path) -> dict[str, str]:
    env, run = results.environment, results.run
    tags = {
        "mode": run.mode,
        "model": results.model.get("label"),
        "profiled": "yes" if run.profiled else "no",
        "contended": None if run.contended is None else "yes" if run.contended else "no",
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        # On a CPU run the device is the CPU: one tag says it.
        "cpu": env.get("cpu") if env.get("cpu") != env.get("device_name") else None,
        "cpu_capability": _cpu_capability(env),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "python": env.get("python"),
        "hostname": env.get("hostname"),
        "rosebench_version": env.get("rosebench"),
        MLFLOW_GIT_COMMIT: env.get("git_commit"),
        "hydra_job_id": run.job_id,
        "slurm_job_id": env.get("slurm_job_id"),
        SWEEP_ORDER_TAG: None if run.job_num is None else f"{run.job_num:04d}",
        "hydra_overrides": json.dumps(run.overrides),
        "sweep_dir": run.sweep_dir,
        RUN_DIR_TAG: str(run_dir.resolve()),
        MLFLOW_RUN_NOTE: profile_note(results),
    }
    return {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items() if v is not None}


def _cpu_capability(env: dict) -> str | None:
    """``AVX2``, or ``AVX512 amx_bf16 avx512_bf16``: whether bf16 can be fast where the run ran."""
    if not env.get("cpu_capability"):  # results.json from before it was recorded
        return None
    return " ".join([env["cpu_capability"], *env.get("cpu_bf16_matrix_units", [])])


def _log_artifacts(client: MlflowClient, run_id: str, run_dir: Path, texts: Mapping[str, str]) -> None:
    for name in (RESULTS_FILE, OUTPUTS_FILE):
        if name in texts:  # the runner's own text, whether or not the folder could take it
            client.log_text(run_id, texts[name], name)
        elif (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / ERRORS_FILE).is_file():  # written by the runner as requests to a server failed
        client.log_artifact(run_id, str(run_dir / ERRORS_FILE))
    for job_log in sorted(run_dir.glob("*.log")):
        if job_log.stat().st_size:  # Hydra's job log is empty unless something was logged
            client.log_artifact(run_id, str(job_log))
    for folder in (".hydra", "profile"):
        if (run_dir / folder).is_dir():
            client.log_artifacts(run_id, str(run_dir / folder), artifact_path=folder)


def _log_into(
    client: MlflowClient,
    run_id: str,
    run_dir: Path,
    results: RunResults,
    artifacts: bool,
    texts: Mapping[str, str],
) -> None:
    # One batch for params, metrics and tags: through a server every call costs a round trip.
    client.log_batch(
        run_id,
        metrics=mlflow_metrics(results),
        params=[Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in shaping_params(results).items()],
        tags=[RunTag(k, v) for k, v in mlflow_tags(results, run_dir).items()],
    )
    if artifacts:
        if results.metrics:
            client.log_table(run_id, data=figures_table(results), artifact_file=FIGURES_TABLE)
        _log_artifacts(client, run_id, run_dir, texts)


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
    texts: Mapping[str, str] | None = None,
) -> str:
    """Log everything in `run_dir` and return the run id.

    Without `run_id` a new run is created (a child of `parent_run_id` if given) with the folder's
    name, times and end status. With `run_id`, the folder is logged into that live run, whose owner ends it.
    Params, metrics and tags come from `results` when given (the runner's, in memory: a full disk may have
    kept results.json from being written), else from the folder's results.json; artifacts from the folder,
    except the files given in `texts` (name -> content, the runner's), which are logged from memory.
    """
    run_dir = Path(run_dir)
    uri = resolve_tracking_uri(settings.uri)
    client = connect(uri)
    results = results or read_run(run_dir)
    if run_id is not None:
        _log_into(client, run_id, run_dir, results, settings.artifacts, texts or {})
        return run_id
    run = client.create_run(
        experiment_id or get_or_create_experiment(client, settings.experiment, uri),
        start_time=_epoch_ms(results.run.started_at),
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else None,
        run_name=results.run.name,
    )
    new_id = run.info.run_id
    try:
        _log_into(client, new_id, run_dir, results, settings.artifacts, texts or {})
    except BaseException:
        client.set_terminated(new_id, "FAILED")  # not left RUNNING; the upload can be retried with --force
        raise
    client.set_terminated(new_id, results.status, end_time=_epoch_ms(results.run.ended_at))
    return new_id
