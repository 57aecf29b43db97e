"""A sweep's parent run: created once in the launcher process, closed with its children's table and plots."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

from mlflow import MlflowClient

from rosebench.overrides import swept_keys
from rosebench.tracking.table import SWEEP_PARENT_TAG, Table, child_runs, row_from_run

SWEEP_TABLE = "sweep_table.json"


def create_sweep_parent(
    client: MlflowClient, experiment_id: str, sweep_dir: Path, overrides: list[str]
) -> str:
    """A RUNNING parent run for a sweep, made with the client so no fluent run leaks into in-process jobs."""
    keys = swept_keys(overrides)
    name = "-".join(["sweep", datetime.now().strftime("%Y%m%d-%H%M%S"), *keys])
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            SWEEP_PARENT_TAG: "yes",
            "sweep_dir": str(sweep_dir.resolve()),
            "sweep_overrides": json.dumps(overrides),
            "swept_keys": ",".join(keys),
        },
    )
    return run.info.run_id


def end_running_children(client: MlflowClient, parent_run_id: str, status: str) -> list[str]:
    """End the children still RUNNING (their processes are gone) with `status`; returns their names."""
    ended = []
    for run in child_runs(client, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
            ended.append(run.info.run_name or run.info.run_id)
    return ended


def close_sweep_parent(client: MlflowClient, parent_run_id: str, status: str | None = None) -> str:
    """Log the children table and plots to the parent and end it; returns the status it ended with.

    Without `status`: FINISHED when there are children and all finished, else FAILED.
    """
    table = Table.of(row_from_run(run) for run in child_runs(client, parent_run_id))
    if status is None:
        done = bool(table.rows) and all(row.status == "FINISHED" for row in table.rows)
        status = "FINISHED" if done else "FAILED"
    try:
        if table.rows:
            client.log_table(parent_run_id, data=table.columns(), artifact_file=SWEEP_TABLE)
            with tempfile.TemporaryDirectory() as tmp:
                for png in table.plots(Path(tmp)):
                    client.log_artifact(parent_run_id, str(png), artifact_path="plots")
    finally:
        client.set_terminated(parent_run_id, status)
    return status
