"""Log run folders to MLflow after the fact: one run, or a sweep (a parent run plus a child per job).

A folder already logged (its tracking.json names a run that exists in the target store) is skipped
unless ``force``; a sweep whose store died half-way gets its missing jobs added under the parent the
others already have.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from omegaconf import OmegaConf

from rosebench.tracking.mlflow_log import log_run_folder
from rosebench.tracking.run_folder import TrackingRecord, find_run_folders, is_run_folder, read_results
from rosebench.tracking.settings import TrackingSettings, redact_uri
from rosebench.tracking.store import (
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    run_exists,
    ui_hint,
)
from rosebench.tracking.sweep_parent import close_sweep_parent, create_sweep_parent


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
    _, problem = read_results(run_dir)
    if problem is not None:  # what is readable still logs: the config, the artifacts, status FAILED
        print(f"rosebench.upload: warning: {problem}; logging the config and files only, as FAILED")
    run_id = log_run_folder(run_dir, TrackingSettings(uri=uri), parent_run_id, experiment_id)
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


def upload_sweep(client: MlflowClient, uri: str, sweep_dir: Path, experiment: str, force: bool) -> str | None:
    """Log the sweep's job folders as children of one parent run; returns the parent's id (None: skipped).

    The parent named in the sweep's mlflow_sweep.json is reused when it exists in the store, so a sweep
    whose server died half-way gets its missing jobs added under the parent the others already have.
    """
    jobs = [d for d in find_run_folders(sweep_dir) if d != sweep_dir]
    pending = jobs if force else [d for d in jobs if already_logged(client, d) is None]
    if not pending:
        print(
            f"skipped {sweep_dir}: all {len(jobs)} job folders are already logged (use --force to log again)"
        )
        return None
    handoff = None if force else SweepHandoff.read(sweep_dir)
    if handoff and run_exists(client, handoff.parent_run_id):
        parent_run_id = handoff.parent_run_id
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment_id = get_or_create_experiment(client, experiment, uri)
        parent_run_id = create_sweep_parent(client, experiment_id, sweep_dir, sweep_overrides(sweep_dir))
        SweepHandoff(uri, experiment_id, parent_run_id).write(sweep_dir)
    for job_dir in pending:
        upload_run(client, uri, job_dir, experiment_id, parent_run_id)
    status = close_sweep_parent(client, parent_run_id)
    print(f"sweep parent run {parent_run_id} ended {status} ({len(pending)} of {len(jobs)} jobs logged now)")
    print(ui_hint(uri, experiment_id, parent_run_id))
    return parent_run_id


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
    print(ui_hint(uri, experiment_id, run_id))
    return run_id
