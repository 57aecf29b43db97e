"""The real CLI into a real MLflow store: a profiled run, sweeps with one parent, parallel jobs, faults."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import (
    act_at_line,
    assert_ok,
    describe,
    finished_pass,
    logged_figures,
    read_results,
    run_cli,
    run_tool,
    start_cli,
)
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from test_tracking import figures_rows
from test_tracking_server import group_alive

from rosebench.results import HEADLINE_METRICS
from rosebench.signals import CHILDREN_GRACE_S
from rosebench.tracking.mlflow_log import CONDITION_METRICS, PROFILE_METRICS, rounded
from rosebench.tracking.plots import PLOTTED_METRICS

pytestmark = pytest.mark.slow

TINY = ("engine=tiny", "max_new_tokens=4", "warmup=0")


def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def experiment_runs(client: MlflowClient, name: str = "rosebench") -> list:
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"experiment {name!r} was not created"
    return client.search_runs([experiment.experiment_id])


def run_upload(cwd: Path, folder: Path | str, uri: str) -> subprocess.CompletedProcess[str]:
    return run_tool(cwd, "upload", str(folder), "--uri", uri)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def logged_figure(client: MlflowClient, run: Run, name: str) -> float:
    """A figure's mean from the run's figures table (the metrics hold the headline figures only)."""
    return figures_rows(client, run.info.run_id)[name]["mean"]


def logged_passes(client: MlflowClient, run: Run) -> int:
    """How many timed passes the run's figures table holds."""
    return sum(key.startswith("pass ") for key in figures_rows(client, run.info.run_id)["requests"])


def sweep_dir(cwd: Path) -> Path:
    [day] = (cwd / "outputs" / "multirun").iterdir()
    [started] = day.iterdir()
    return started


def test_profiled_run_lands_with_params_metrics_tags_and_artifacts(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    proc = run_cli(
        tmp_path,
        *TINY,
        "num_requests=3",
        "repeat=2",
        "mode=online",
        "profile.enabled=true",
        f"tracking.uri={uri}",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    [run] = experiment_runs(client)
    assert run.info.status == "FINISHED"
    # A single run keeps its short name: mode, then its overrides.
    overrides = "engine=tiny-max_new_tokens=4-warmup=0-num_requests=3-repeat=2-profile.enabled=true"
    assert run.info.run_name == f"online-{overrides}"
    link = f"#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey="
    assert f"{link}rosebench" in proc.stdout  # the printed UI link: the runs table, headline columns
    view = json.loads(client.get_experiment(run.info.experiment_id).tags["mlflow.sharedViewState.rosebench"])
    assert view["columnOrder"][:3] == [
        "metrics.`throughput_completion_tok_s`",
        "metrics.`ttft_ms_p50`",
        "metrics.`tpot_ms_p50`",
    ]  # what a performance engineer reads first, not MLflow's alphabetical e2e, itl, peak_rss
    assert (
        set(view["columnOrder"])
        == set(view["selectedColumns"])
        == {f"metrics.`{m}`" for m in HEADLINE_METRICS}
    )
    assert "searchFilter" not in view  # single runs: the whole experiment, earlier runs beside this one
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["engine.model"] == "tiny" and params["num_requests"] == "3" and params["mode"] == "online"
    results = read_results(tmp_path / "run")
    assert metrics["throughput_completion_tok_s"] == rounded(
        results["metrics"]["throughput_completion_tok_s"]
    )
    # The headline only, how busy the machine was, and the trace's headline (sweeps compare them).
    profile_metrics = {f"profile/{name}" for name in PROFILE_METRICS}
    figures = logged_figures(metrics)
    assert figures <= {*HEADLINE_METRICS, *CONDITION_METRICS, *profile_metrics}
    # System metrics are on by default: the "System metrics" tab draws CPU and memory over the run.
    for sampled in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert client.get_metric_history(run.info.run_id, sampled), sampled
    assert "ttft_ms_p99" in metrics
    summary = results["profile"]["summary"]
    assert metrics["profile/cpu_ops_per_decode_step"] == rounded(summary["cpu_ops_per_decode_step"])
    assert "profile/kernels_per_decode_step" not in metrics  # a CPU run launches no kernel
    # Where the trace is and how to look at it, on the run's page (MLflow cannot open a trace itself).
    [trace] = results["profile"]["traces"]
    note = tags["mlflow.note.content"]
    assert f"`{trace}`" in note and "https://ui.perfetto.dev" in note
    assert metrics["contention_max"] == rounded(results["metrics"]["contention_max"])
    figures = figures_rows(client, run.info.run_id)  # the rest: mean, std, each pass
    assert figures["completion_tokens"]["mean"] == 12
    assert [figures["completion_tokens"][f"pass {n}"] for n in (1, 2)] == [12, 12]
    assert figures["profile/window_ms"]["mean"] > 0 and figures["throughput_completion_tok_s"]["std"] >= 0
    # Online and profiled: the arrival process and the profiler's settings shaped this run.
    assert params["scheduler.request_rate"] == "inf" and params["profile.detail"] == "step"
    assert tags["profiled"] == "yes" and tags["mode"] == "online" and tags["device"] == "cpu"
    assert (params["model.n_layer"], params["model.n_embd"], tags["model"]) == ("2", "64", "tiny")
    assert tags["torch"] and tags["rosebench_version"]
    environment = results["environment"]
    expected = [environment["cpu_capability"], *environment["cpu_bf16_matrix_units"]]
    assert tags["cpu_capability"].split() == expected
    artifacts = artifact_paths(client, run.info.run_id)
    assert {"results.json", "outputs.jsonl", ".hydra/config.yaml", "profile/summary.json"} <= artifacts
    assert any(p.startswith("profile/trace_") and p.endswith(".json.gz") for p in artifacts)
    tracking = (tmp_path / "run" / "tracking.json").read_text()
    assert run.info.run_id in tracking and '"logged": true' in tracking


def test_three_point_multirun_is_one_parent_with_three_children(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    proc = run_cli(tmp_path, "--multirun", *TINY, "repeat=1", "num_requests=1,2,3", f"tracking.uri={uri}")
    assert_ok(proc)
    runs = experiment_runs(client)
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags[MLFLOW_PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["num_requests"] for c in children) == ["1", "2", "3"]
    assert all(c.info.status == "FINISHED" for c in children)
    artifacts = artifact_paths(client, parent.info.run_id)
    assert "sweep_table.json" in artifacts
    assert any(p.startswith("plots/") and p.endswith(".png") for p in artifacts)
    # The report compares the sweep from the store and from its folder alike.
    for selector in (["--parent", parent.info.run_id, "--uri", uri], ["--sweep", str(sweep_dir(tmp_path))]):
        report = run_tool(tmp_path, "report", *selector, "--format", "csv")
        assert report.returncode == 0, report.stderr
        lines = report.stdout.strip().splitlines()
        assert len(lines) == 4 and "num_requests" in lines[0], report.stdout


def test_a_sweep_reads_in_mlflow_as_a_user_sees_it(tmp_path: Path) -> None:
    """Names that tell points apart, a parent that reads collapsed, the headline figures only, params
    that shaped the run, no noise, and the link to the sweep's runs table."""
    uri, client = store(tmp_path)
    swept = ("num_requests=1,2", "scheduler.max_batch_size=1,2")
    proc = run_cli(tmp_path, "--multirun", *TINY, "repeat=2", *swept, f"tracking.uri={uri}")
    assert_ok(proc)
    runs = experiment_runs(client)
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]

    assert parent.info.run_name == (
        "sweep num_requests=1,2 scheduler.max_batch_size=1,2 (engine=tiny max_new_tokens=4 warmup=0 repeat=2)"
    )
    assert sorted(c.info.run_name for c in children) == [
        # the values first: MLflow's name column shows about 15 characters
        f"{n}, {b} (num_requests, max_batch_size) offline-tiny"
        for n in (1, 2)
        for b in (1, 2)
    ]
    # The collapsed parent: swept values and fixed values; over two knobs no figure of its own (a "best of
    # each metric" row would mix children), the sweep table and plots instead.
    assert parent.data.params["num_requests"] == "1,2" and parent.data.params["engine.model"] == "tiny"
    assert parent.data.params["scheduler.max_batch_size"] == "1,2"
    assert not set(HEADLINE_METRICS) & set(parent.data.metrics)
    assert parent.data.params["parent_metrics"].startswith("none: a sweep over several knobs")
    # The printed link opens the runs table in the sweep's view: its swept params, then the headline.
    view = client.get_experiment(parent.info.experiment_id).tags[
        f"mlflow.sharedViewState.{parent.info.run_id}"
    ]
    state = json.loads(view)
    assert state["selectedColumns"][:5] == [
        "params.`num_requests`",
        "params.`scheduler.max_batch_size`",
        "metrics.`throughput_completion_tok_s`",
        "metrics.`ttft_ms_p50`",
        "metrics.`tpot_ms_p50`",
    ]
    # MLflow lays out metrics before params unless the view orders them; each column as wide as its name.
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["columnWidths"]["metrics.`throughput_completion_tok_s`"] >= 7 * len(
        "throughput_completion_tok_s"
    )
    # Scoped to this sweep's points, in launch order: the search the UI runs from the view finds exactly them.
    # (Sorted by anything but start time, MLflow lists children flat instead of under a collapsed parent.)
    assert state["orderByKey"] != "attributes.start_time" and state["orderByAsc"] is True
    order = state["orderByKey"].replace("`", "")
    shown = client.search_runs([parent.info.experiment_id], state["searchFilter"], order_by=[f"{order} ASC"])
    assert [r.info.run_name.split(" (")[0] for r in shown] == ["1, 1", "1, 2", "2, 1", "2, 2"]
    assert f"workflowType=machine_learning&viewStateShareKey={parent.info.run_id}" in proc.stdout
    # and the parent's own page (its table and plots), in the classic view too
    assert f"/runs/{parent.info.run_id}?workflowType=machine_learning" in proc.stdout

    child = next(c for c in children if c.info.run_name.startswith("2, 2 (num_requests, max_batch_size)"))
    results = read_results(Path(child.data.tags["run_dir"]))
    metrics, params, tags = child.data.metrics, child.data.params, child.data.tags
    figures = logged_figures(metrics)
    assert figures and figures <= {*HEADLINE_METRICS, *CONDITION_METRICS}
    assert all(rounded(metrics[k]) == metrics[k] for k in figures)  # 4 significant digits, not 67.5416454545
    assert metrics["throughput_completion_tok_s"] == rounded(
        results["metrics"]["throughput_completion_tok_s"]
    )
    figures = figures_rows(client, child.info.run_id)
    first_pass = results["passes"][0]["throughput_completion_tok_s"]
    assert figures["throughput_completion_tok_s"]["pass 1"] == rounded(first_pass)
    # Params: what shaped the run. Offline and greedy; profiler off; nothing unset; not where it was logged.
    assert "None" not in params.values()
    assert not any(k.startswith(("tracking.", "scheduler.request_rate", "sampling.top_k")) for k in params)
    assert [k for k in params if k.startswith("profile.")] == ["profile.enabled"]
    assert params["num_requests"] == "2" and params["engine.attention"] == "slot"
    # Tags: one name per fact.
    assert (
        "git_commit" not in tags and tags["mlflow.source.git.commit"] == results["environment"]["git_commit"]
    )
    assert "hydra_job_name" not in tags and "cpu" not in tags  # the CPU is the device here: device_name
    artifacts = artifact_paths(client, child.info.run_id)
    assert {".hydra/config.yaml", "figures.json", "results.json"} <= artifacts
    assert not any(p.endswith(".log") for p in artifacts)  # Hydra's job log is empty here


def test_report_groups_two_sweeps(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    for swept in ("num_requests=1,2", "max_new_tokens=2,3"):
        assert_ok(run_cli(tmp_path, "--multirun", *TINY, "repeat=2", swept, f"tracking.uri={uri}"))
    report = run_tool(
        tmp_path, "report", "--experiment", "rosebench", "--uri", uri, "--format", "csv", "--plots", "p"
    )
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(report.stdout.splitlines()))
    sweeps = [row["sweep"] for row in rows]
    assert sweeps == [sweeps[0]] * 2 + [sweeps[2]] * 2 and sweeps[0] != sweeps[2], sweeps  # not interleaved
    assert sweeps[0].startswith("sweep num_requests=1,2") and sweeps[2].startswith("sweep max_new_tokens=2,3")
    assert [row["num_requests"] for row in rows[:2]] == ["1", "2"]
    written = sorted(p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p").rglob("*.png"))
    assert written == sorted(
        [
            "sweep1/frontier_num_requests.png",  # num_requests is a load knob: its frontier too
            "sweep1/latency_vs_throughput_num_requests.png",
            *(f"sweep1/{metric}_vs_num_requests.png" for metric in PLOTTED_METRICS),  # a PNG per metric
            *(f"sweep2/{metric}_vs_max_new_tokens.png" for metric in PLOTTED_METRICS),
        ]
    )


def test_eight_parallel_jobs_into_a_fresh_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    proc = run_cli(
        tmp_path,
        "--multirun",
        *TINY,
        "repeat=1",
        "num_requests=1,2,3,4,5,6,7,8",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        f"tracking.uri={uri}",
        timeout=900,
    )
    assert_ok(proc)
    experiment = client.get_experiment_by_name("rosebench")
    assert [e.name for e in client.search_experiments()].count("rosebench") == 1
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert sorted(int(c.data.params["num_requests"]) for c in children) == list(range(1, 9))
    assert all(
        c.info.status == "FINISHED" and c.info.experiment_id == experiment.experiment_id for c in children
    )
    assert len(runs) == 9  # nothing filed elsewhere, nothing twice
    assert parent.info.status == "FINISHED"


def test_failed_job_closes_the_parent_failed_and_keeps_the_others(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    proc = run_cli(tmp_path, "--multirun", *TINY, "repeat=1", "num_requests=0,2", f"tracking.uri={uri}")
    assert proc.returncode != 0, describe(proc)
    assert "num_requests=0: must be >= 1" in proc.stderr
    runs = experiment_runs(client)
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert parent.info.status == "FAILED"
    [child] = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert child.data.params["num_requests"] == "2" and child.info.status == "FINISHED"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # free once the socket closes: nothing listens there


def test_unreachable_store_keeps_the_run_then_upload_logs_it(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        *TINY,
        "num_requests=2",
        "repeat=1",
        f"tracking.uri=http://127.0.0.1:{closed_port()}",
        "hydra.run.dir=run",
        timeout=300,
    )
    assert_ok(proc)
    run_dir = tmp_path / "run"
    assert "MLflow tracking failed" in proc.stderr and "python -m rosebench.upload" in proc.stderr
    assert read_results(run_dir)["run"]["status"] == "FINISHED"
    assert (run_dir / "outputs.jsonl").is_file() and '"logged": false' in (
        run_dir / "tracking.json"
    ).read_text()

    uri, client = store(tmp_path)
    upload = run_upload(tmp_path, str(run_dir), uri)
    assert upload.returncode == 0, upload.stderr
    [run] = experiment_runs(client)
    assert logged_figure(client, run, "requests") == 2 and run.info.status == "FINISHED"
    assert "results.json" in artifact_paths(client, run.info.run_id)


@pytest.mark.parametrize(
    ("stop", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR2, 140)]
)
def test_stop_signal_mid_pass_keeps_the_finished_passes(tmp_path: Path, stop: int, exit_code: int) -> None:
    """Ctrl-C (SIGINT), Slurm's SIGTERM or its pre-limit SIGUSR2 mid-pass: the finished passes are the
    figures, in results.json and in the MLflow run (KILLED); the pass in flight is dropped; one line."""
    uri, client = store(tmp_path)
    args = [
        *TINY,
        "num_requests=8",
        "max_new_tokens=64",
        "repeat=1000",
        f"tracking.uri={uri}",
        "hydra.run.dir=run",
    ]
    proc = start_cli(tmp_path, *args)
    seen = []
    try:
        for line in proc.stderr:  # each finished timed pass says so on stderr
            seen.append(line)
            if finished_pass(line, "pass 2/1000"):
                proc.send_signal(stop)
                break
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stderr = "".join(seen) + rest
    assert proc.returncode == exit_code, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [message] = [line for line in rest.splitlines() if line.startswith("rosebench: interrupted")]
    assert f"by {signal.Signals(stop).name}" in message and "status KILLED" in message

    results = read_results(tmp_path / "run")
    finished = len(results["passes"])
    assert results["run"]["status"] == "KILLED" and 2 <= finished < 1000
    assert f"kept {finished} finished timed passes" in message
    assert results["metrics"]["requests"] == 8
    [run] = experiment_runs(client)
    assert run.info.status == "KILLED"
    assert run.data.metrics["throughput_completion_tok_s"] == rounded(
        results["metrics"]["throughput_completion_tok_s"]
    )
    assert logged_passes(client, run) == finished
    assert run.data.params["num_requests"] == "8"


def test_eight_separate_processes_into_one_fresh_store(tmp_path: Path) -> None:
    """Eight shells (a Slurm array) start at the same moment against a store that does not exist yet:
    every run lands, finished, under the right experiment, with its own figures."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        start_cli(
            tmp_path,
            *TINY,
            "repeat=1",
            f"num_requests={n}",
            f"tracking.uri={uri}",
            "tracking.experiment=array",
            f"hydra.run.dir=run{n}",
        )
        for n in range(1, 9)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for n, (proc, (_, stderr)) in enumerate(zip(procs, outputs), start=1):
        assert proc.returncode == 0, f"process {n}: {stderr[-2000:]}"
        assert "MLflow tracking failed" not in stderr, f"process {n}: {stderr[-2000:]}"
    client = MlflowClient(uri)
    runs = experiment_runs(client, "array")
    assert sorted(int(r.data.params["num_requests"]) for r in runs) == list(range(1, 9))
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(logged_figure(client, r, "requests") == int(r.data.params["num_requests"]) for r in runs)
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id]), "runs filed under Default"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 512 KiB tmpfs: the run folder's disk, to be filled mid-run (needs root, as in CI here)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def test_full_disk_at_the_end_loses_no_figure(tmp_path: Path, small_disk: Path) -> None:
    """The disk fills during the timed passes: the table is printed, MLflow gets every figure from memory,
    one line names the files that could not be written, no half-written file is left; after space is
    freed, rosebench.upload reports the folder as damaged in one line and logs what is readable."""
    uri, client = store(tmp_path)
    run_dir = small_disk / "run"
    proc = start_cli(
        tmp_path, *TINY, "num_requests=4", "repeat=3", f"tracking.uri={uri}", f"hydra.run.dir={run_dir}"
    )
    stdout, stderr = act_at_line(proc, "rosebench: pass 1/3:", lambda: fill(small_disk))
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [message] = [line for line in stderr.splitlines() if line.startswith("rosebench: error:")]
    [run] = experiment_runs(client)
    full = "(No space left on device)"
    assert message == (
        f"rosebench: error: could not write {run_dir / 'results.json'} {full}; "
        f"{run_dir / 'outputs.jsonl'} {full}; {run_dir / 'tracking.json'} {full}; "
        f"results.json and outputs.jsonl are artifacts of MLflow run {run.info.run_id}; "
        "tracking.json would name that run, printed below"
    )
    assert f"mlflow: MLflow run {run.info.run_id}" in stdout
    assert "completion throughput (tok/s)" in stdout  # printed before any write was tried
    assert not (run_dir / "results.json").exists() and not list(run_dir.glob(".*.tmp"))

    assert run.info.status == "FINISHED" and logged_figure(client, run, "requests") == 4
    # What the folder could not take is in MLflow, whole: the figures of every pass and each request.
    downloaded = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "dl")))
    logged_results = json.loads(downloaded.read_text())
    assert logged_results["run"]["status"] == "FINISHED" and len(logged_results["passes"]) == 3
    assert logged_results["metrics"]["requests"] == 4
    outputs = Path(client.download_artifacts(run.info.run_id, "outputs.jsonl", str(tmp_path / "dl")))
    assert [json.loads(line)["request_id"] for line in outputs.read_text().splitlines()] == [0, 1, 2, 3]
    printed = next(line for line in stdout.splitlines() if line.startswith("completion throughput"))
    # Printed with one decimal (off by 0.05 at most), logged with 4 significant digits (5e-4 relative):
    # at 23.87 tok/s the table shows 23.9, a relative 1e-3 would not hold.
    shown = float(printed.split()[3])
    assert run.data.metrics["throughput_completion_tok_s"] == pytest.approx(shown, abs=0.05 + 5e-4 * shown)
    assert logged_passes(client, run) == 3

    (small_disk / "filler").unlink()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    upload = run_upload(tmp_path, str(run_dir), other)
    assert upload.returncode == 0 and "Traceback" not in upload.stderr, upload.stderr[-3000:]
    [warning] = [line for line in upload.stdout.splitlines() if "warning" in line]
    assert "results.json: missing" in warning and "logging the config and files only" in warning
    [uploaded] = experiment_runs(MlflowClient(other))
    assert uploaded.info.status == "FAILED" and uploaded.data.params["num_requests"] == "4"


def test_full_disk_with_tracking_off_says_what_is_lost(tmp_path: Path, small_disk: Path) -> None:
    run_dir = small_disk / "run"
    proc = start_cli(
        tmp_path, *TINY, "num_requests=2", "repeat=2", "tracking=off", f"hydra.run.dir={run_dir}"
    )
    stdout, stderr = act_at_line(proc, "rosebench: pass 1/2:", lambda: fill(small_disk))
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    [message] = [line for line in stderr.splitlines() if line.startswith("rosebench: error:")]
    assert message.endswith(
        "(No space left on device); results.json and outputs.jsonl are lost (tracking is off); "
        "the figures are in the table above"
    ), message
    assert "completion throughput (tok/s)" in stdout


def test_upload_of_a_truncated_results_file_says_so_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, *TINY, "repeat=1", "num_requests=2", "tracking=off", "hydra.run.dir=run")
    assert_ok(proc)
    results = tmp_path / "run" / "results.json"
    results.write_text(results.read_text()[:100])  # as an old rosebench left it on a full disk
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    upload = run_upload(tmp_path, str(tmp_path / "run"), uri)
    assert upload.returncode == 0 and "Traceback" not in upload.stderr, upload.stderr[-3000:]
    [warning] = [line for line in upload.stdout.splitlines() if "warning" in line]
    assert "results.json: damaged (JSONDecodeError" in warning
    [run] = experiment_runs(MlflowClient(uri))
    assert run.info.status == "FAILED" and run.data.params["num_requests"] == "2"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_a_parallel_sweep(tmp_path: Path, stop: int) -> None:
    """A 4-point hydra/launcher=parallel sweep stopped while its 2 workers run. SIGTERM to the launcher:
    the workers stop with it, the parent and the started children end KILLED, exit 143. SIGKILL to every
    process (nothing can run then): rosebench.upload of the sweep folder names the points that never ran,
    ends the children the store still shows RUNNING (no duplicate) and closes the parent."""
    uri, client = store(tmp_path)
    sweep = [
        *TINY,
        "repeat=100000",
        "num_requests=2",
        # Passes of about a second (arrivals at 2 requests/s): a few finish before the stop, not a thousand
        # whose logging alone took a minute of this test.
        "mode=online",
        "scheduler.request_rate=2",
        "seed=1,2,3,4",
        f"tracking.uri={uri}",
        "hydra.sweep.dir=sweep",
    ]
    proc = start_cli(
        tmp_path,
        "--multirun",
        "hydra/launcher=parallel",
        *sweep,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    # The workers write to the launcher's stderr: read it as it comes, to stop once each worker has finished
    # a timed pass (a fixed wait was too short when the rest of the suite kept the cores busy).
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        children: list = []
        while len(children) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            if (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("rosebench"):
                children = [r for r in experiment_runs(client) if "rosebench_sweep_parent" not in r.data.tags]
        assert len(children) == 2, "the two workers did not start their runs"
        first_passes = 0
        while first_passes < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)  # each worker prints its first timed pass's line once
            first_passes = sum(finished_pass(line, "pass 1/100000") for line in list(lines))
        assert first_passes == 2, "the two workers did not finish a timed pass"
        time.sleep(1)  # and maybe another
        stopped_at = time.monotonic()
        if stop == signal.SIGTERM:
            proc.send_signal(stop)
        else:
            os.killpg(proc.pid, stop)
        proc.wait(timeout=120)
        reader.join(timeout=30)
        stderr = "".join(lines)
        # The workers end once their runs are closed; the launcher does not wait out its grace for idle
        # pool processes (it did: every stopped parallel sweep took a minute).
        assert time.monotonic() - stopped_at < CHILDREN_GRACE_S
        deadline = time.monotonic() + 30
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not group_alive(proc.pid), "sweep workers outlived their launcher"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    runs = experiment_runs(client)
    [parent] = [r for r in runs if "rosebench_sweep_parent" in r.data.tags]
    children = [r for r in runs if r is not parent]
    if stop == signal.SIGTERM:
        assert proc.returncode == 143, stderr[-3000:]
        assert "rosebench: stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr[-3000:]
        assert parent.info.status == "KILLED"
        assert [r.info.status for r in children] == ["KILLED", "KILLED"]
        logged = [logged_figure(client, r, "requests") for r in children]
        assert logged == [2, 2], "the finished passes were not logged"
    else:
        assert parent.info.status == "RUNNING" and {r.info.status for r in children} == {"RUNNING"}

    upload = run_upload(tmp_path, str(tmp_path / "sweep"), uri)
    assert upload.returncode == 0 and "Traceback" not in upload.stderr, upload.stderr[-3000:]
    [never] = [line for line in upload.stdout.splitlines() if line.startswith("never ran")]
    assert never == "never ran (2 of 4 points): seed=3; seed=4", upload.stdout
    after = experiment_runs(client)
    assert len(after) == 3, "the upload duplicated a child"
    assert {r.info.status for r in after} <= {"KILLED", "FAILED"}, [r.info.status for r in after]
