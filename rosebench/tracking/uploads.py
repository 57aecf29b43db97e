"""Log run folders to MLflow after the fact: one run, or a sweep (a parent run plus a child per job).

A folder already logged (its tracking.json names a run that exists in the target store) is skipped
unless ``force``; a sweep whose store died half-way gets its missing jobs added under the parent the
others already have.
"""

from __future__ import annotations

from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from mlflow import MlflowClient
from omegaconf import OmegaConf

from rosebench.overrides import parse_overrides, swept_keys
from rosebench.results import RESULTS_FILE
from rosebench.tracking.mlflow_log import RUN_DIR_TAG, log_run_folder
from rosebench.tracking.run_folder import (
    TrackingRecord,
    find_run_folders,
    is_run_folder,
    read_results,
    read_run,
)
from rosebench.tracking.settings import TrackingSettings, redact_uri
from rosebench.tracking.store import (
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    run_exists,
    runs_table_url,
    ui_hint,
)
from rosebench.tracking.sweep_parent import close_sweep_parent, create_sweep_parent
from rosebench.tracking.table import child_runs


def already_logged(client: MlflowClient, run_dir: Path) -> str | None:
    """The run id this folder was logged as, if that run exists in the client's store."""
    record = TrackingRecord.read(run_dir)
    if record and record.logged and record.run_id and run_exists(client, record.run_id):
        return record.run_id
    return None


def upload_run(
    client: MlflowClient, uri: str, run_dir: Path, experiment_id: str, parent_run_id: str | None = None
) -> str:
    """Log one run folder as a new run and record it in the folder's tracking.json."""
    results, problem = read_results(run_dir)
    if problem is not None:  # what is readable still logs: the config, the artifacts, status FAILED
        print(f"rosebench.upload: warning: {problem}; logging the config and files only, as FAILED")
    run_id = log_run_folder(run_dir, TrackingSettings(uri=uri), parent_run_id, experiment_id, results=results)
    record = TrackingRecord(
        logged=True, tracking_uri=redact_uri(uri), experiment_id=experiment_id, run_id=run_id
    )
    record.write(run_dir)
    print(f"logged {run_dir} as run {run_id}")
    return run_id


def sweep_overrides(sweep_dir: Path) -> list[str]:
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return []
    task = OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task", default=[])
    return [str(o) for o in OmegaConf.to_container(task, resolve=False)]


def never_ran(sweep_dir: Path, jobs: list[Path]) -> list[str]:
    """The sweep's points (its swept ``key=value`` pairs) that have no job folder."""
    overrides = sweep_overrides(sweep_dir)
    swept = set(swept_keys(overrides))
    expected = [
        job for batch in BasicSweeper.split_arguments(parse_overrides(overrides), None) for job in batch
    ]
    ran = []
    for job_dir in jobs:
        path = job_dir / ".hydra" / "overrides.yaml"
        if path.is_file():
            ran.append(set(OmegaConf.to_container(OmegaConf.load(path))))
    return [
        " ".join(o for o in point if o.split("=", 1)[0].lstrip("+~") in swept)
        for point in expected
        if set(point) not in ran
    ]


def upload_sweep(client: MlflowClient, uri: str, sweep_dir: Path, experiment: str, force: bool) -> str | None:
    """Log the sweep's job folders as children of one parent run; returns the parent's id (None: skipped).

    The parent named in the sweep's mlflow_sweep.json is reused when it exists in the store, so a sweep
    whose server died half-way gets its missing jobs added under the parent the others already have; a
    child the store still shows RUNNING (its process was killed) is ended with what its folder holds
    rather than logged twice. Points of the sweep that never ran are named.
    """
    jobs = [d for d in find_run_folders(sweep_dir) if d != sweep_dir]
    handoff = None if force else SweepHandoff.read(sweep_dir)
    parent_run_id = handoff.parent_run_id if handoff and run_exists(client, handoff.parent_run_id) else None
    in_store = {}
    if parent_run_id is not None:
        in_store = {run.data.tags.get(RUN_DIR_TAG): run for run in child_runs(client, parent_run_id)}
    # A job folder with neither results nor a run in the store is a point a stopped sweep never started.
    started = [d for d in jobs if (d / RESULTS_FILE).is_file() or str(d.resolve()) in in_store]
    missing = never_ran(sweep_dir, started)
    if missing:
        print(f"never ran ({len(missing)} of {len(missing) + len(started)} points): {'; '.join(missing)}")
    pending = started if force else [d for d in started if already_logged(client, d) is None]
    if not pending:
        print(f"skipped {sweep_dir}: its {len(started)} job folders are logged (use --force to log again)")
        return None
    if parent_run_id is not None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = get_or_create_experiment(client, experiment, uri)
        parent_run_id = create_sweep_parent(client, experiment_id, sweep_dir, sweep_overrides(sweep_dir))
        SweepHandoff(redact_uri(uri), experiment_id, parent_run_id).write(sweep_dir)
    for job_dir in pending:
        orphan = in_store.get(str(job_dir.resolve()))
        if orphan is not None and orphan.info.status == "RUNNING":
            end_orphan(client, uri, job_dir, orphan.info.run_id, experiment_id)
        else:
            upload_run(client, uri, job_dir, experiment_id, parent_run_id)
    current = client.get_run(parent_run_id).info.status  # a stopped sweep's parent keeps its KILLED
    status = current if current != "RUNNING" else "FAILED" if missing else None
    status = close_sweep_parent(client, parent_run_id, status)
    print(
        f"sweep parent run {parent_run_id} ended {status} ({len(pending)} of {len(started)} jobs logged now)"
    )
    print(ui_hint(uri, parent_run_id, runs_table_url(uri, experiment_id, parent_run_id)))
    return parent_run_id


def end_orphan(client: MlflowClient, uri: str, run_dir: Path, run_id: str, experiment_id: str) -> None:
    """A run left RUNNING by a killed process: log its folder into it and end it (KILLED when the folder
    has no finished results)."""
    results = read_run(run_dir)
    log_run_folder(run_dir, TrackingSettings(uri=uri), run_id=run_id, results=results)
    status = results.status if results.status != "FAILED" or results.metrics else "KILLED"
    client.set_terminated(run_id, status)
    TrackingRecord(
        logged=True, tracking_uri=redact_uri(uri), experiment_id=experiment_id, run_id=run_id
    ).write(run_dir)
    print(f"ended {run_dir}'s run {run_id}, left RUNNING by its killed process, as {status}")


def upload(
    path: Path, uri: str | None = None, experiment: str = "rosebench", force: bool = False
) -> str | None:
    """Log a run or sweep folder; returns the run (or parent run) id, None when skipped as already logged."""
    uri = resolve_tracking_uri(uri)
    client = connect(uri)
    if not is_run_folder(path):
        return upload_sweep(client, uri, path, experiment, force)
    logged_as = None if force else already_logged(client, path)
    if logged_as is not None:
        print(f"skipped {path}: already logged as run {logged_as} (use --force to log again)")
        return None
    experiment_id = get_or_create_experiment(client, experiment, uri)
    run_id = upload_run(client, uri, path, experiment_id)
    print(ui_hint(uri, run_id, runs_table_url(uri, experiment_id)))
    return run_id
