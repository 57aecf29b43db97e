"""A sweep's parent run: created once in the launcher process, closed with its children's table and plots."""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from rosebench.overrides import sweep_name, swept_keys
from rosebench.results import HEADLINE_METRICS
from rosebench.tracking.plots import TRIAL, as_number
from rosebench.tracking.store import save_runs_view
from rosebench.tracking.table import SWEEP_PARENT_TAG, Table, child_runs, row_from_run

SWEEP_TABLE = "sweep_table.json"
FRONTIER_FILE = "frontier.json"  # a sweep over a load knob: its points, frontier and knee, by knob
SWEEP_DIR_TAG = "sweep_dir"  # the sweep folder's absolute path: an upload finds the sweep's parent by it
_PARAMS_PER_BATCH = 100  # MLflow's limits for one log_batch call
_METRICS_PER_BATCH = 1000


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
    # The sweep's view of the runs table: its points alone, their swept params beside the headline metrics.
    save_runs_view(client, experiment_id, run.info.run_id, keys, children_of=run.info.run_id)
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


PARENT_METRICS_PARAM = "parent_metrics"  # says what the parent's headline metrics are


def parent_figures(
    children: Sequence[tuple[Mapping[str, str], Mapping[str, float]]], swept: Sequence[str]
) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """The parent's headline metrics from its finished children's (params, metrics), as {metric: [(step,
    value)]}, and a line saying what they are. Never a composite of different children ("the best of each
    metric" mixed runs):

    - one numeric knob swept: each metric's history against the knob, so MLflow's own line charts on the
      parent draw it; step = the knob's value where every value is an integer, else its rank (MLflow steps
      are integers; the line names each rank's value). Children at one value (trials) are averaged.
    - ``trial`` alone swept: the mean over the trials at step 0, and its standard deviation as ``<m>_std``.
    - anything else: none (the sweep table and plots say it all).
    """
    if list(swept) == [TRIAL]:
        figures = {}
        for metric in HEADLINE_METRICS:
            values = [metrics[metric] for _, metrics in children if metric in metrics]
            if values:
                figures[metric] = [(0, statistics.fmean(values))]
                figures[f"{metric}_std"] = [(0, statistics.pstdev(values))]
        return figures, "mean over the trials (and their standard deviation as <metric>_std)"
    numbers = [as_number(params.get(swept[0], "")) for params, _ in children] if len(swept) == 1 else []
    if not numbers or any(n is None for n in numbers):
        return {}, "none: a sweep over several knobs, or not a number (see sweep_table.json and plots/)"
    knob = swept[0]
    values = sorted(set(numbers))
    integers = all(math.isfinite(v) and v == int(v) for v in values)
    step = {v: int(v) if integers else rank for rank, v in enumerate(values)}
    at_value = {v: [metrics for n, (_, metrics) in zip(numbers, children) if n == v] for v in values}
    figures = {}
    for metric in HEADLINE_METRICS:
        history = [
            (step[v], statistics.fmean(m[metric] for m in runs if metric in m))
            for v, runs in at_value.items()
            if any(metric in m for m in runs)
        ]
        if history:
            figures[metric] = history
    if integers:
        return figures, f"each child's figures with step = {knob}"
    ranks = ", ".join(f"{step[v]}={v:g}" for v in values)
    return figures, f"each child's figures with step = the rank of {knob} ({ranks})"


def close_sweep_parent(client: MlflowClient, parent_run_id: str, status: str | None = None) -> str:
    """Give the parent the sweep's params, its headline figures (``parent_figures``), the children's table
    and plots (and, for a sweep over a load knob, its frontier summary), and end it; returns the status it
    ended with.

    Without `status`: FINISHED when there are children and all finished, else FAILED. Closing again (an
    upload after an interrupted sweep) adds the params not yet logged: MLflow's params never change.
    """
    children = child_runs(client, parent_run_id)
    table = Table.of(row_from_run(run, client) for run in children)
    if status is None:
        done = bool(table.rows) and all(row.status == "FINISHED" for row in table.rows)
        status = "FINISHED" if done else "FAILED"
    try:
        parent = client.get_run(parent_run_id)
        swept = [k for k in parent.data.tags.get("swept_keys", "").split(",") if k]
        finished = [(r.data.params, r.data.metrics) for r in children if r.info.status == "FINISHED"]
        figures, meaning = parent_figures(finished, swept)
        found = {**sweep_params(children), PARENT_METRICS_PARAM: meaning[:MAX_PARAM_VAL_LENGTH]}
        params = [Param(k, v) for k, v in found.items() if k not in parent.data.params]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, history in figures.items() for step, v in history]
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(parent_run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])
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
