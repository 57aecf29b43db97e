"""``rosebench.compare --log``: what the MLflow UI shows of a comparison, read back through ``MlflowClient``
from a real SQLite store after the real CLI logged it: the run's name, its verdict tags, its metrics
(rounded as a run's figures are), the saved view that the printed link opens, and the links between the
comparison and the runs it compared.

The verdicts and ratios themselves are whatever this shared machine measured: each is checked against the
comparison's own JSON report, not against a fixed value.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from statistics import geometric_mean
from urllib.parse import parse_qs, urlparse

import pytest
from cli_helpers import assert_ok, describe, run_cli, run_tool
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from test_capacity_compare import report

from rosebench.comparison import overall_verdict
from rosebench.tracking.mlflow_log import rounded
from rosebench.tracking.run_folder import TrackingRecord
from rosebench.tracking.store import SHARED_VIEW_TAG, SweepHandoff

# Cheap real runs logged to MLflow: 3 timed passes each, so that every metric has an interval.
RUN = ("engine=tiny", "warmup=0", "repeat=3", "max_new_tokens=4", "tracking=mlflow")
THROUGHPUT = "throughput_completion_tok_s"
COMPARED_IN = "rosebench.compared_in"


def compare(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(cwd, "compare", *args)


def uri_of(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs logged to one store: a (default attention) and b (naive), and two sweeps over num_requests=2,3,
    sa and sb (naive)."""
    root = tmp_path_factory.mktemp("logged")
    store = f"tracking.uri={uri_of(root)}"
    for name, extra in (("a", []), ("b", ["engine.attention=naive"])):
        assert_ok(run_cli(root, *RUN, "num_requests=2", store, *extra, f"hydra.run.dir={name}"))
    for name, extra in (("sa", []), ("sb", ["engine.attention=naive"])):
        sweep = ("--multirun", *RUN, "num_requests=2,3", store, *extra, f"hydra.sweep.dir={name}")
        assert_ok(run_cli(root, *sweep))
    return root


def comparison_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """The experiment's runs, oldest first."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])


def view_columns(client: MlflowClient, proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The columns, in order, of the saved view that the link the command printed opens."""
    link = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    fragment = urlparse(link).fragment  # /experiments/<id>/runs?workflowType=...&viewStateShareKey=...
    path, query = fragment.split("?", 1)
    experiment_id = path.split("/")[2]
    [key] = parse_qs(query)["viewStateShareKey"]
    state = json.loads(client.get_experiment(experiment_id).tags[f"{SHARED_VIEW_TAG}{key}"])
    assert state["columnOrder"] == state["selectedColumns"], state
    return state["selectedColumns"]


def ratio_metrics(comparison: dict) -> dict[str, float]:
    """The metrics a comparison's run holds, from its JSON report: each ratio and interval end, rounded."""
    figures = {}
    for m in comparison["metrics"]:
        for key in ("ratio", "ci_low", "ci_high"):
            if m[key] is not None:
                figures[f"{key}/{m['metric']}"] = rounded(m[key])
    return figures


def verdict_tags(comparison: dict) -> dict[str, str]:
    return {f"verdict/{m['metric']}": m["verdict"] for m in comparison["metrics"]}


def run_id_of(run_dir: Path) -> str:
    record = TrackingRecord.read(run_dir)
    assert record is not None and record.run_id, run_dir
    return record.run_id


def link_to(client: MlflowClient, run_id: str) -> str:
    """How a comparison's description links a run: relative, so that any host serving the UI resolves it,
    and to the classic run page (MLflow 3.17 otherwise may open its GenAI one)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return f"(#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning)"


@pytest.mark.slow
def test_a_run_comparison_is_named_judged_rounded_and_linked_both_ways(logged: Path) -> None:
    uri, client = uri_of(logged), MlflowClient(uri_of(logged))
    ids = {side: run_id_of(logged / side) for side in ("a", "b")}
    names = {side: client.get_run(run_id).info.run_name for side, run_id in ids.items()}
    args = ("a", "b", "--allow", "engine.attention", "--log", "--uri", uri, "--experiment", "runs")
    proc = compare(logged, *args, "--json", "first.json")
    assert_ok(proc)
    [run] = comparison_runs(client, "runs")
    assert run.info.run_id in proc.stdout.splitlines()[-1]
    # What differs first (the name column shows about 18 characters), then the MLflow runs' names, not a and b
    assert run.info.run_name == f"engine.attention=naive vs slot: {names['b']} vs {names['a']}"
    [c] = json.loads((logged / "first.json").read_text())["comparisons"]
    assert run.data.metrics == ratio_metrics(c)  # rounded to 4 significant digits
    tags = run.data.tags
    assert {k: tags.get(k) for k in verdict_tags(c)} == verdict_tags(c)
    assert (tags["verdict"], tags["headline_metric"]) == (tags[f"verdict/{THROUGHPUT}"], THROUGHPUT)
    assert (tags["baseline_run_id"], tags["candidate_run_id"]) == (ids["a"], ids["b"])
    # The link opens a view of the verdict, the headline's ratio and interval, then the other ratios.
    columns = view_columns(client, proc)
    assert columns[:4] == [
        "tags.`verdict`",
        f"metrics.`ratio/{THROUGHPUT}`",
        f"metrics.`ci_low/{THROUGHPUT}`",
        f"metrics.`ci_high/{THROUGHPUT}`",
    ]
    assert {f"metrics.`ratio/{m['metric']}`" for m in c["metrics"]} <= set(columns)
    # Both ways: the description links the two runs, and each run names the comparison.
    for run_id in ids.values():
        assert link_to(client, run_id) in tags[MLFLOW_RUN_NOTE]
        assert client.get_run(run_id).data.tags[COMPARED_IN] == run.info.run_id
    assert "| throughput_completion_tok_s |" in tags[MLFLOW_RUN_NOTE]  # the report, rendered

    # The same runs judged on E2E latency: a second comparison, listed after the first on both runs, whose
    # link leads with that metric (the first one's still leads with throughput).
    again = compare(logged, *args, "--metric", "e2e_ms_p50", "--json", "second.json")
    assert_ok(again)
    first, second = comparison_runs(client, "runs")
    assert first.info.run_id == run.info.run_id and second.info.run_id in again.stdout.splitlines()[-1]
    assert second.data.tags["verdict"] == second.data.tags["verdict/e2e_ms_p50"]
    assert second.data.tags["headline_metric"] == "e2e_ms_p50"
    assert view_columns(client, again)[1] == "metrics.`ratio/e2e_ms_p50`"
    assert view_columns(client, proc)[1] == f"metrics.`ratio/{THROUGHPUT}`"
    for run_id in ids.values():
        listed = client.get_run(run_id).data.tags[COMPARED_IN]
        assert listed == f"{first.info.run_id},{second.info.run_id}"


@pytest.mark.slow
def test_a_sweep_comparison_is_a_parent_with_a_run_per_point(logged: Path) -> None:
    """The parent is named after the two sweeps' parent runs and holds the points' verdicts counted and the
    geometric means of their ratios; each point is a child run holding its own comparison."""
    uri, client = uri_of(logged), MlflowClient(uri_of(logged))
    parents = {side: SweepHandoff.read(logged / side).parent_run_id for side in ("sa", "sb")}
    names = {side: client.get_run(run_id).info.run_name for side, run_id in parents.items()}
    args = ("sa", "sb", "--allow", "engine.attention", "--log", "--uri", uri, "--experiment", "sweeps")
    proc = compare(logged, *args, "--json", "sweeps.json")
    assert_ok(proc)
    comparisons = json.loads((logged / "sweeps.json").read_text())["comparisons"]
    assert [c["point"] for c in comparisons] == ["num_requests=2", "num_requests=3"]
    runs = comparison_runs(client, "sweeps")
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert parent.info.run_id in proc.stdout.splitlines()[-1]
    assert parent.info.run_name == f"engine.attention=naive vs slot: {names['sb']} vs {names['sa']}"
    assert (parent.data.tags["baseline_run_id"], parent.data.tags["candidate_run_id"]) == (
        parents["sa"],
        parents["sb"],
    )
    metrics = {m["metric"] for c in comparisons for m in c["metrics"]}
    for metric in metrics:
        points = [m for c in comparisons for m in c["metrics"] if m["metric"] == metric]
        assert parent.data.tags[f"verdict/{metric}"] == overall_verdict([m["verdict"] for m in points])
        expected = rounded(geometric_mean([m["ratio"] for m in points]))
        assert parent.data.metrics[f"ratio/{metric}"] == expected, metric
    assert parent.data.tags["verdict"] == parent.data.tags[f"verdict/{THROUGHPUT}"]
    assert view_columns(client, proc)[:2] == ["tags.`verdict`", f"metrics.`ratio/{THROUGHPUT}`"]
    for side, run_id in parents.items():
        assert client.get_run(run_id).data.tags[COMPARED_IN] == parent.info.run_id, side
        assert link_to(client, run_id) in parent.data.tags[MLFLOW_RUN_NOTE]
    children = {r.info.run_name: r for r in runs if r.info.run_id != parent.info.run_id}
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in children.values()} == {parent.info.run_id}
    assert sorted(children) == ["num_requests=2", "num_requests=3"]
    for c in comparisons:
        child = children[c["point"]]
        assert child.data.metrics == ratio_metrics(c)
        assert {k: child.data.tags.get(k) for k in verdict_tags(c)} == verdict_tags(c)
        point_ids = (c["baseline_run_id"], c["candidate_run_id"])
        assert (child.data.tags["baseline_run_id"], child.data.tags["candidate_run_id"]) == point_ids
        for run_id in point_ids:
            assert client.get_run(run_id).data.tags[COMPARED_IN] == child.info.run_id


@pytest.mark.slow
def test_sides_the_store_does_not_hold_are_named_from_their_folders_and_left_alone(
    logged: Path, tmp_path: Path
) -> None:
    """Logged to another store, the runs are named as their results.json names them, and nothing is
    written to them; a folder of repeated runs (no MLflow run of its own) is named after the folder."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    client, other_client = MlflowClient(uri_of(logged)), MlflowClient(other)
    ids = {side: run_id_of(logged / side) for side in ("a", "b")}
    before = {run_id: client.get_run(run_id).data.tags.get(COMPARED_IN) for run_id in ids.values()}
    proc = compare(logged, "a", "b", "--allow", "engine.attention", "--log", "--uri", other)
    assert_ok(proc)
    [run] = comparison_runs(other_client, "rosebench-compare")
    names = {side: json.loads((logged / side / "results.json").read_text())["run"]["name"] for side in ids}
    assert run.info.run_name == f"engine.attention=naive vs slot: {names['b']} vs {names['a']}"
    assert run.data.tags["baseline_run_id"] == ids["a"]  # where it was logged, for whoever has that store
    assert "#/experiments/" not in run.data.tags[MLFLOW_RUN_NOTE]
    assert {run_id: client.get_run(run_id).data.tags.get(COMPARED_IN) for run_id in ids.values()} == before
    for side in ("a", "b"):  # two trials of one config a side, copied: no MLflow run stands for the folder
        for trial in ("t0", "t1"):
            shutil.copytree(logged / side, tmp_path / f"trials_{side}" / trial)
    proc = compare(tmp_path, "trials_a", "trials_b", "--allow", "engine.attention", "--log", "--uri", other)
    assert_ok(proc)
    newest = comparison_runs(other_client, "rosebench-compare")[-1]
    assert newest.info.run_name == "engine.attention=naive vs slot: trials_b vs trials_a", describe(proc)
    assert "baseline_run_id" not in newest.data.tags


def test_capacity_comparison_is_named_after_the_searches_and_linked_to_their_parent_runs(
    tmp_path: Path,
) -> None:
    """Two capacity searches' folders (capacity.json and the hand-off naming each one's parent run) against
    parent runs in a real store: the comparison is named after the parents, its verdict is a tag, its
    link's view leads with the verdict and the capacity ratio, and each parent names the comparison."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("searches", artifact_location=str(tmp_path / "mlruns"))
    parents = {}
    for folder, bracket, name in (("slow", (8, 16), "main search"), ("fast", (16, 32), "my-change search")):
        (tmp_path / folder).mkdir()
        report(*bracket).save(tmp_path / folder)
        parents[folder] = client.create_run(experiment_id, run_name=name).info.run_id
        client.set_terminated(parents[folder])
        SweepHandoff(uri, experiment_id, parents[folder]).write(tmp_path / folder)
    proc = compare(tmp_path, "slow", "fast", "--log", "--uri", uri, "--experiment", "capacity")
    assert_ok(proc)
    [run] = comparison_runs(client, "capacity")
    assert run.info.run_name == "my-change search vs main search"
    assert run.data.metrics == {"capacity_ratio": 2.0, "capacity_ratio_low": 1.0, "capacity_ratio_high": 4.0}
    tags = run.data.tags
    assert (tags["verdict"], tags["capacity_verdict"], tags["headline_metric"]) == (
        "better",
        "better",
        "capacity_ratio",
    )
    assert (tags["baseline_run_id"], tags["candidate_run_id"]) == (parents["slow"], parents["fast"])
    assert view_columns(client, proc)[:2] == ["tags.`verdict`", "metrics.`capacity_ratio`"]
    for run_id in parents.values():
        assert client.get_run(run_id).data.tags[COMPARED_IN] == run.info.run_id
        assert link_to(client, run_id) in tags[MLFLOW_RUN_NOTE]


def test_a_sweeps_verdict_on_a_metric_counts_its_points_worst_first() -> None:
    assert overall_verdict(["worse", "worse"]) == "worse"
    mixed = ["no significant change", "better", "worse", "not enough samples", "worse"]
    assert overall_verdict(mixed) == "2 worse, 1 better, 1 no significant change, 1 not enough samples"


def test_a_comparison_of_one_config_at_two_commits_leads_with_the_commits() -> None:
    """The usual case, the same config before and after a change: the commits tell the sides apart."""
    from rosebench.compare import _what_differs
    from rosebench.comparison import Comparison

    def comparison(config: dict, environment: dict) -> Comparison:
        return Comparison("a", "b", None, None, config, environment, [])

    commits = {"git_commit": ("0afe6199a578", "b42ba3a0c1d2"), "torch": ("2.14", "2.14.1")}
    assert _what_differs(comparison({}, commits)) == "git b42ba3a vs 0afe619"
    assert _what_differs(comparison({"engine.dtype": ("float32", "bfloat16")}, commits)) == (
        "engine.dtype=bfloat16 vs float32"
    )
    assert _what_differs(comparison({}, {"torch": ("2.14", "2.14.1")})) == ""
