"""A sweep's parent run: created once in the launcher process, closed with its children's table and plots."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from rosebench.overrides import sweep_name, swept_keys
from rosebench.results import HEADLINE_METRICS
from rosebench.tracking.store import save_runs_view
from rosebench.tracking.table import SWEEP_PARENT_TAG, Table, child_runs, row_from_run

SWEEP_TABLE = "sweep_table.json"
FRONTIER_FILE = "frontier.json"  # a sweep over a load knob: its points, frontier and knee, by knob
SWEEP_DIR_TAG = "sweep_dir"  # the sweep folder's absolute path: an upload finds the sweep's parent by it
_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


def create_sweep_parent(
    client: MlflowClient,
    experiment_id: str,
    sweep_dir: Path,
    overrides: list[str],
    searched: str | None = None,
) -> str:
    """A RUNNING parent run for a sweep, made with the client so no fluent run leaks into in-process jobs;
    ``searched``: the knob a capacity search moves."""
    keys = [*swept_keys(overrides), *([searched] if searched else [])]
    run = client.create_run(
        experiment_id,
        run_name=sweep_name(overrides, searched),
        tags={
            SWEEP_PARENT_TAG: "yes",
            SWEEP_DIR_TAG: str(sweep_dir.resolve()),
            "sweep_overrides": json.dumps(overrides),
            "swept_keys": ",".join(keys),
        },
    )
    # The sweep's view of the runs table: its swept params beside the headline metrics.
    save_runs_view(client, experiment_id, run.info.run_id, keys)
    return run.info.run_id


def end_running_children(client: MlflowClient, parent_run_id: str, status: str) -> list[str]:
    """End the children still RUNNING (their processes are gone) with `status`; returns their names."""
    ended = []
    for run in child_runs(client, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
            ended.append(run.info.run_name or run.info.run_id)
    return ended


def sweep_params(children: Sequence[Run]) -> dict[str, str]:
    """The sweep's params: each one its children share, with its value; a swept one with its values in job
    order (``1,16,64``), so that a collapsed sweep reads at a glance."""
    rows = {run.info.run_id: row_from_run(run) for run in children}
    ordered = sorted(children, key=lambda run: (rows[run.info.run_id].job_num, run.info.start_time or 0))
    values: dict[str, list[str]] = {}
    for run in ordered:
        for key, value in run.data.params.items():
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    return {key: ",".join(seen)[:MAX_PARAM_VAL_LENGTH] for key, seen in values.items()}


def best_metrics(children: Sequence[Run]) -> dict[str, float]:
    """Each headline metric's best value over the finished children (higher or lower, as it should be)."""
    finished = [run.data.metrics for run in children if run.info.status == "FINISHED"]
    best = {}
    for metric, higher_is_better in HEADLINE_METRICS.items():
        values = [metrics[metric] for metrics in finished if metric in metrics]
        if values:
            best[metric] = max(values) if higher_is_better else min(values)
    return best


def close_sweep_parent(client: MlflowClient, parent_run_id: str, status: str | None = None) -> str:
    """Give the parent the sweep's params, its best headline figures, the children's table and plots (and,
    for a sweep over a load knob, its frontier summary), and end it; returns the status it ended with.

    Without `status`: FINISHED when there are children and all finished, else FAILED. Closing again (an
    upload after an interrupted sweep) adds the params not yet logged: MLflow's params never change.
    """
    children = child_runs(client, parent_run_id)
    table = Table.of(row_from_run(run, client) for run in children)
    if status is None:
        done = bool(table.rows) and all(row.status == "FINISHED" for row in table.rows)
        status = "FINISHED" if done else "FAILED"
    try:
        logged = client.get_run(parent_run_id).data.params
        params = [Param(k, v) for k, v in sweep_params(children).items() if k not in logged]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in best_metrics(children).items()]
        client.log_batch(parent_run_id, metrics=metrics)
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(parent_run_id, params=params[start : start + _PARAMS_PER_BATCH])
        if table.rows:
            client.log_table(parent_run_id, data=table.columns(), artifact_file=SWEEP_TABLE)
            if frontiers := table.frontiers():  # before the plots: a plot that fails leaves the figures
                client.log_dict(parent_run_id, frontiers, FRONTIER_FILE)
            with tempfile.TemporaryDirectory() as tmp:
                for png in table.plots(Path(tmp)):
                    client.log_artifact(parent_run_id, str(png), artifact_path="plots")
    finally:
        client.set_terminated(parent_run_id, status)
    return status
