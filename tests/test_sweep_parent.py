"""What a sweep's parent run holds as its own figures (each child's, never a composite of several), and
the view of the runs table its link opens."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rosebench.results import RunInfo, RunResults
from rosebench.tracking.mlflow_log import mlflow_tags
from rosebench.tracking.store import SHARED_VIEW_TAG
from rosebench.tracking.sweep_parent import create_sweep_parent, parent_figures

TPUT = "throughput_completion_tok_s"


def child(params: dict[str, str], throughput: float, ttft: float | None = None):
    metrics = {TPUT: throughput, **({} if ttft is None else {"ttft_ms_p50": ttft})}
    return params, metrics


def test_one_integer_knob_gives_each_childs_figures_with_step_the_knob():
    children = [child({"num_requests": "16"}, 30.0, 9.0), child({"num_requests": "1"}, 10.0, 2.0)]
    figures, meaning = parent_figures(children, ["num_requests"])
    assert figures[TPUT] == [(1, 10.0), (16, 30.0)]
    assert figures["ttft_ms_p50"] == [(1, 2.0), (16, 9.0)]
    assert meaning == "each child's figures with step = num_requests"


def test_a_non_integer_knob_steps_by_rank_and_names_each_rank():
    rates = ["inf", "0.5", "2"]
    children = [child({"scheduler.request_rate": r}, t) for r, t in zip(rates, (90.0, 10.0, 40.0))]
    figures, meaning = parent_figures(children, ["scheduler.request_rate"])
    assert figures[TPUT] == [(0, 10.0), (1, 40.0), (2, 90.0)]  # inf is the highest load
    assert meaning.endswith("the rank of scheduler.request_rate (0=0.5, 1=2, 2=inf)")


def test_repeats_at_one_value_are_averaged_not_picked():
    # A capacity search runs a value again (trials): its step holds their mean.
    children = [child({"scheduler.request_rate": "4"}, t) for t in (10.0, 14.0)]
    children.append(child({"scheduler.request_rate": "2"}, 8.0))
    figures, _ = parent_figures(children, ["scheduler.request_rate"])
    assert figures[TPUT] == [(2, 8.0), (4, 12.0)]


def test_a_trial_sweep_holds_the_mean_and_standard_deviation_over_trials():
    children = [child({"trial": str(i)}, t) for i, t in enumerate((10.0, 12.0, 14.0))]
    figures, meaning = parent_figures(children, ["trial"])
    assert figures[TPUT] == [(0, 12.0)]
    assert math.isclose(figures[f"{TPUT}_std"][0][1], math.sqrt(8 / 3))
    assert meaning.startswith("mean over the trials")


def test_several_knobs_or_text_values_give_the_parent_no_figure():
    two = [child({"a": "1", "b": "2"}, 1.0), child({"a": "2", "b": "1"}, 2.0)]
    assert parent_figures(two, ["a", "b"])[0] == {}
    text = [child({"engine.attention": "slot"}, 1.0), child({"engine.attention": "naive"}, 2.0)]
    figures, meaning = parent_figures(text, ["engine.attention"])
    assert figures == {} and meaning.startswith("none")


def test_the_sweeps_view_lists_its_points_alone_in_launch_order_past_ten_jobs(tmp_path: Path) -> None:
    """The search the UI runs from the sweep's saved view, through a real SQLite store: only this sweep's
    points (not its parent, not another sweep), job 10 after job 9 (text order of '10' < '9' would not)."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("sweeps")
    parents = [create_sweep_parent(client, experiment_id, tmp_path / s, ["num_requests=1"]) for s in "ab"]
    for parent in parents:
        for job_num in range(12):
            results = RunResults(config={}, environment={}, run=RunInfo(f"job {job_num}", job_num=job_num))
            tags = mlflow_tags(results, tmp_path) | {MLFLOW_PARENT_RUN_ID: parent}
            client.create_run(experiment_id, run_name=f"job {job_num}", tags=tags)
    state = json.loads(client.get_experiment(experiment_id).tags[f"{SHARED_VIEW_TAG}{parents[1]}"])
    order = state["orderByKey"].replace("`", "") + (" ASC" if state["orderByAsc"] else " DESC")
    shown = client.search_runs([experiment_id], state["searchFilter"], order_by=[order])
    assert [r.info.run_name for r in shown] == [f"job {n}" for n in range(12)]
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in shown} == {parents[1]}
