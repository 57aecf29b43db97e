"""rosebench.tracking against a real SQLite MLflow store: live runs, faults, uploads, sweeps, reports.

The run and sweep folders logged here are the runner's own: ``python -m rosebench`` (tracking off) writes
them once per session, and each test logs a copy of its own.
"""

import atexit
import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from statistics import pstdev
from typing import Any

import mlflow
import pytest
import torch
from cli_helpers import assert_ok, describe, read_results, run_cli
from matplotlib.container import ErrorbarContainer
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from omegaconf import DictConfig, OmegaConf

from rosebench import report, upload
from rosebench.engine.config import MODEL_PRESETS
from rosebench.engine.models.gpt2 import GPT2
from rosebench.tracking import TrackedRun, TrackingSettings, TrackingWarning, log_run_folder
from rosebench.tracking.mlflow_log import rounded
from rosebench.tracking.plots import PLOTTED_METRICS, SweepPoint, metric_vs_param_figure
from rosebench.tracking.run_folder import config_params
from rosebench.tracking.store import CLIENT_ENV_DEFAULTS, SWEEP_HANDOFF, resolve_tracking_uri
from rosebench.tracking.sweep_callback import MlflowSweepCallback
from rosebench.tracking.sweep_parent import SWEEP_TABLE
from rosebench.tracking.table import Table, child_runs, row_from_folder

HEADLINE = [
    "throughput_completion_tok_s",
    "request_throughput_req_s",
    "ttft_ms_p50",
    "tpot_ms_p50",
    "e2e_ms_p50",
]
# Every run here: the 2-layer model, 4 new tokens, no warm-up and two timed passes (so that a spread and
# a column per pass are logged), written to its folder only.
RUN = ("engine=tiny", "max_new_tokens=4", "warmup=0", "repeat=2", "tracking=off")
SWEEP = (*RUN, "num_requests=1,4,16")
SWEEP_PLOTS = [f"plots/{metric}_vs_num_requests.png" for metric in PLOTTED_METRICS]  # a PNG per metric
# Longer than MLflow's 6000-character param limit, yet 110 tokens: 64 dashes are one GPT-2 token.
LONG_PROMPT = "-" * 7000


def run_benchmark(cwd: Path, *overrides: str) -> Path:
    """The folder the runner writes for RUN plus `overrides`, made under `cwd`."""
    cwd.mkdir(parents=True, exist_ok=True)
    assert_ok(run_cli(cwd, *RUN, *overrides, "hydra.run.dir=run"))
    return cwd / "run"


@pytest.fixture(scope="session")
def profiled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A profiled online run of 4 requests whose prompt is LONG_PROMPT."""
    return run_benchmark(
        tmp_path_factory.mktemp("profiled"),
        "mode=online",
        "num_requests=4",
        "profile.enabled=true",
        f"workload.prompt={LONG_PROMPT}",
    )


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished basic-launcher sweep over num_requests=1,4,16."""
    root = tmp_path_factory.mktemp("sweep")
    assert_ok(run_cli(root, "--multirun", *SWEEP, "hydra.sweep.dir=sweep"))
    return root / "sweep"


@pytest.fixture(scope="session")
def half_failed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep over engine.weights=null,nan.pt: job 0 (the preset's random weights) finishes; job 1's NaN
    weights give non-finite logits at the first prefill, and the runner writes its results.json with
    status FAILED and no figures."""
    root = tmp_path_factory.mktemp("half_failed")
    tiny = MODEL_PRESETS["tiny"]
    state = GPT2(tiny).state_dict()
    state["ln_f.weight"].fill_(float("nan"))
    torch.save({"model": state, "config": dataclasses.asdict(tiny)}, root / "nan.pt")
    # A relative path: a job folder is named after its overrides, where a "/" would nest folders.
    proc = run_cli(
        root, "--multirun", *RUN, "num_requests=4", "engine.weights=null,nan.pt", "hydra.sweep.dir=sweep"
    )
    assert proc.returncode != 0 and "non-finite logits" in proc.stderr, describe(proc)
    return root / "sweep"


def jobs_in_order(sweep_dir: Path) -> list[Path]:
    """A sweep folder's job folders, in launch order."""
    jobs = [results.parent for results in sweep_dir.glob("*/results.json")]
    return sorted(jobs, key=lambda job: read_results(job)["run"]["job_num"])


def logged(results: dict[str, Any], metric: str) -> float:
    """A figure of results.json as MLflow holds it (4 significant digits)."""
    return rounded(results["metrics"][metric])


def epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


class SilentStore:
    """A port whose listener accepts each connection and closes it unanswered, counting them: a tracking
    server that is up but never answers, where every HTTP attempt, first or retried, is one connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # the listener was shut down
                return
            self.connections += 1
            connection.close()

    def __enter__(self) -> "SilentStore":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the thread is blocked in (Linux)
        self.listener.close()
        self.thread.join()


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def figures_rows(client: MlflowClient, run_id: str) -> dict[str, dict]:
    """The run's figures table (MLflow's log_table format), as metric -> row."""
    table = json.loads(Path(client.download_artifacts(run_id, "figures.json")).read_text())
    return {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # Default store = <cwd>/mlflow.db: keep every test's database (and ./mlruns) inside tmp_path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("https://mlflow.example") == "https://mlflow.example"
    for file_store in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(ValueError, match="file store"):
            resolve_tracking_uri(file_store)


def test_tracked_run_logs_the_folder(tmp_path, profiled_run):
    run_dir = tmp_path / "outputs" / "run"
    results = read_results(profiled_run)
    name = results["run"]["name"]
    assert name.endswith(f"workload.prompt={'-' * 23}…")  # the 7000-character value is cut in the name
    with TrackedRun(TrackingSettings(), run_dir, name) as tracked:
        shutil.copytree(profiled_run, run_dir)  # the runner writes the folder while the run is live

    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged"] is True and record["error"] is None
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert record["run_id"] == tracked.record.run_id
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == name
    assert client.get_experiment(run.info.experiment_id).name == "rosebench"
    # Artifacts next to the database, not in whatever ./mlruns the process started in.
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))

    params = run.data.params
    assert params["num_requests"] == "4"
    assert params["engine.attention"] == results["config"]["engine"]["attention"]
    assert params["profile.enabled"] == "True"
    assert params["workload.prompt"] == LONG_PROMPT[:MAX_PARAM_VAL_LENGTH]  # cut to what MLflow takes

    metrics = run.data.metrics  # the headline figures only; the rest are in the figures table
    assert metrics["throughput_completion_tok_s"] == logged(results, "throughput_completion_tok_s")
    assert metrics["ttft_ms_p50"] == logged(results, "ttft_ms_p50")
    assert "requests" not in metrics and "elapsed_total_s" not in metrics
    figures = figures_rows(client, run.info.run_id)
    throughput = figures["throughput_completion_tok_s"]
    assert throughput["std"] == rounded(results["metrics_std"]["throughput_completion_tok_s"])
    passes = results["passes"]
    assert [throughput[f"pass {n}"] for n in range(1, len(passes) + 1)] == [
        rounded(one_pass["throughput_completion_tok_s"]) for one_pass in passes
    ]
    assert f"pass {len(passes) + 1}" not in throughput
    assert figures["elapsed_total_s"]["mean"] == logged(results, "elapsed_total_s")
    profile = {k: v for k, v in results["profile"]["metrics"].items() if isinstance(v, (int, float))}
    assert profile, results["profile"]
    assert {k: figures[f"profile/{k}"]["mean"] for k in profile} == {
        k: rounded(v) for k, v in profile.items()
    }

    tags, environment = run.data.tags, results["environment"]
    assert tags["mode"] == "online"
    assert tags["device"] == environment["device"] and tags["device_name"] == environment["device_name"]
    assert tags["torch"] == environment["torch"] and tags.get("cuda") == environment["cuda"]
    assert tags["rosebench_version"] == environment["rosebench"]
    assert tags["mlflow.source.git.commit"] == environment["git_commit"] and "git_commit" not in tags
    assert tags["profiled"] == "yes"
    assert "hydra_job_name" not in tags
    assert json.loads(tags["hydra_overrides"]) == results["run"]["overrides"]

    # Everything the runner wrote but Hydra's empty job log, and the figures table.
    assert artifact_paths(client, run.info.run_id) == {
        "results.json",
        "outputs.jsonl",
        "figures.json",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "profile/trace_0.json.gz",
        "profile/key_averages.txt",
        "profile/summary.json",
    }


def test_list_config_values_are_params_as_json_text():
    # The runner's config holds no list today (its schema has none): the rule is checked on its own.
    assert config_params({"workload": {"prompt_ids": [1, 2, 3]}}) == {"workload.prompt_ids": "[1, 2, 3]"}


def test_artifacts_off_and_tracking_off(tmp_path, profiled_run):
    logged_dir = tmp_path / "logged"
    with TrackedRun(TrackingSettings(artifacts=False), logged_dir, "no-artifacts"):
        shutil.copytree(profiled_run, logged_dir)
    run_id = json.loads((logged_dir / "tracking.json").read_text())["run_id"]
    client = MlflowClient(sqlite_uri(tmp_path))
    tpot = logged(read_results(profiled_run), "tpot_ms_p50")
    assert client.get_run(run_id).data.metrics["tpot_ms_p50"] == tpot
    assert client.list_artifacts(run_id) == []

    (tmp_path / "mlflow.db").unlink()
    off = tmp_path / "off"
    with TrackedRun(OmegaConf.create({"enabled": False}), off, "off"):
        shutil.copytree(profiled_run, off)
    assert json.loads((off / "tracking.json").read_text())["logged"] is False
    assert not (tmp_path / "mlflow.db").exists()


def test_failing_run_ends_failed_and_ctrl_c_ends_killed(tmp_path, profiled_run):
    failed, killed = tmp_path / "failed", tmp_path / "killed"
    with pytest.raises(RuntimeError, match="out of memory"), TrackedRun(TrackingSettings(), failed, "failed"):
        shutil.copytree(profiled_run, failed)  # a FINISHED results.json: the exception decides
        raise RuntimeError("out of memory")
    with pytest.raises(KeyboardInterrupt), TrackedRun(TrackingSettings(), killed, "killed"):
        # Interrupted before results.json was written: the folder holds only what Hydra wrote first.
        shutil.copytree(profiled_run / ".hydra", killed / ".hydra")
        raise KeyboardInterrupt

    client = MlflowClient(sqlite_uri(tmp_path))
    assert (
        client.get_run(json.loads((failed / "tracking.json").read_text())["run_id"]).info.status == "FAILED"
    )
    record = json.loads((killed / "tracking.json").read_text())
    assert record["logged"] is True
    run = client.get_run(record["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.params["num_requests"] == "4"  # what existed (Hydra's config) was kept
    assert ".hydra/config.yaml" in artifact_paths(client, run.info.run_id)


def test_silent_store_costs_three_attempts_and_a_warning_then_upload_logs_once(
    tmp_path, monkeypatch, profiled_run
):
    for name in CLIENT_ENV_DEFAULTS:  # rosebench's own retry settings, whatever this shell sets
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    results = read_results(profiled_run)
    warned = pytest.warns(TrackingWarning, match=r"python -m rosebench\.upload .*run")
    with SilentStore() as store, warned, TrackedRun(TrackingSettings(uri=store.uri), run_dir, "silent"):
        shutil.copytree(profiled_run, run_dir)
    # One request and two retries; MLflow's default of 7 retries backs off for minutes.
    assert store.connections == 3
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged"] is False and record["run_id"] is None
    assert record["error"].startswith("start: ")

    uri = f"sqlite:///{tmp_path / 'later.db'}"
    first = run_python(
        "-m", "rosebench.upload", str(run_dir), "--uri", uri, "--experiment", "later", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged"] is True
    client = MlflowClient(uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["throughput_completion_tok_s"] == logged(results, "throughput_completion_tok_s")
    # The benchmark's own start, not the upload's.
    assert run.info.start_time == epoch_ms(results["run"]["started_at"])

    second = run_python(
        "-m", "rosebench.upload", str(run_dir), "--uri", uri, "--experiment", "later", cwd=tmp_path
    )
    assert second.returncode == 0 and "skipped" in second.stdout
    experiment = client.get_experiment_by_name("later")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_upload_bad_input_is_one_line(tmp_path):
    result = run_python("-m", "rosebench.upload", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a directory" in result.stderr
    (tmp_path / "empty").mkdir()
    assert upload.main([str(tmp_path / "empty")]) == 2


def test_upload_sweep_folder_makes_parent_and_children(tmp_path, capsys, sweep):
    sweep_dir = shutil.copytree(sweep, tmp_path / "multirun" / "2026-11-30" / "05-30-00")
    jobs = jobs_in_order(sweep_dir)
    uri = sqlite_uri(tmp_path)
    assert upload.main([str(sweep_dir), "--uri", uri]) == 0
    handoff = json.loads((sweep_dir / SWEEP_HANDOFF).read_text())

    client = MlflowClient(uri)
    parent = client.get_run(handoff["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["swept_keys"] == "num_requests"
    children = child_runs(client, parent.info.run_id)
    assert sorted(c.data.params["num_requests"] for c in children) == ["1", "16", "4"]
    assert {json.loads((j / "tracking.json").read_text())["run_id"] for j in jobs} == {
        c.info.run_id for c in children
    }
    assert {SWEEP_TABLE, *SWEEP_PLOTS} <= artifact_paths(client, parent.info.run_id)

    capsys.readouterr()
    assert upload.main([str(sweep_dir), "--uri", uri]) == 0
    assert "skipped" in capsys.readouterr().out
    assert len(child_runs(client, parent.info.run_id)) == 3


def test_log_run_folder_as_child(tmp_path, half_failed_sweep):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("children", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(experiment_id).info.run_id
    failed_job = jobs_in_order(half_failed_sweep)[1]
    run_dir = shutil.copytree(failed_job, tmp_path / "job")
    run_id = log_run_folder(run_dir, TrackingSettings(uri=uri), parent, experiment_id)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FAILED"  # the folder's own status


def multirun_config(sweep_dir: Path, copy_dir: Path) -> DictConfig:
    """The config Hydra handed the callbacks of the sweep in `sweep_dir` (its multirun.yaml), pointed at
    `copy_dir`."""
    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    config.hydra.sweep.dir = str(copy_dir)
    return config


def run_sweep_job(sweep_dir: Path, job: Path) -> str:
    """The sweep job whose folder is `job` again, under `sweep_dir`: its folder appears while its run is
    live, as the runner writes it."""
    job_dir = sweep_dir / job.name
    with TrackedRun(TrackingSettings(), job_dir, read_results(job)["run"]["name"], sweep_dir=sweep_dir):
        shutil.copytree(job, job_dir)
    return json.loads((job_dir / "tracking.json").read_text())["run_id"]


def test_sweep_callback_parent_children_table_and_plots(tmp_path, sweep):
    sweep_dir = tmp_path / "multirun" / "s1"
    config = multirun_config(sweep, sweep_dir)
    callback = MlflowSweepCallback(uri=None, experiment="sweeps")
    callback.on_multirun_start(config)
    assert mlflow.active_run() is None  # the basic launcher runs jobs in this process
    handoff = json.loads((sweep_dir / SWEEP_HANDOFF).read_text())
    client = MlflowClient(handoff["tracking_uri"])
    parent = client.get_run(handoff["parent_run_id"])
    assert parent.info.status == "RUNNING"
    fixed = " ".join(RUN)
    assert parent.info.run_name == f"sweep num_requests=1,4,16 ({fixed})"  # swept first, then fixed
    assert json.loads(parent.data.tags["sweep_overrides"]) == list(SWEEP)
    assert client.get_experiment(handoff["experiment_id"]).name == "sweeps"

    jobs = jobs_in_order(sweep)
    child_ids = [run_sweep_job(sweep_dir, job) for job in jobs]
    callback.on_multirun_end(config)

    parent = client.get_run(handoff["parent_run_id"])
    assert parent.info.status == "FINISHED"
    for child_id in child_ids:
        child = client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.experiment_id == handoff["experiment_id"]
    local = Path(client.download_artifacts(parent.info.run_id, SWEEP_TABLE, str(tmp_path / "dl")))
    table = json.loads(local.read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    results = [read_results(job) for job in jobs]
    throughputs = [logged(r, "throughput_completion_tok_s") for r in results]
    assert [r["num_requests"] for r in rows] == ["1", "4", "16"]
    assert [r["throughput_completion_tok_s"] for r in rows] == throughputs
    assert {r["status"] for r in rows} == {"FINISHED"}
    assert set(SWEEP_PLOTS) <= artifact_paths(client, parent.info.run_id)
    # A collapsed sweep reads at a glance: the swept values and the fixed ones; its figures are each child's,
    # as a history over the knob (MLflow's line chart of the parent draws them against num_requests).
    assert parent.data.params["num_requests"] == "1,4,16" and parent.data.params["engine.model"] == "tiny"
    assert parent.data.params["parent_metrics"] == "each child's figures with step = num_requests"
    for metric in ("throughput_completion_tok_s", "ttft_ms_p50"):
        history = sorted(client.get_metric_history(parent.info.run_id, metric), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [
            (n, logged(r, metric)) for n, r in zip((1, 4, 16), results, strict=True)
        ]


def test_sweep_exit_hook_fails_parent_after_failed_job(tmp_path, half_failed_sweep):
    sweep_dir = tmp_path / "multirun" / "s2"
    config = multirun_config(half_failed_sweep, sweep_dir)
    callback = MlflowSweepCallback(uri=sqlite_uri(tmp_path))
    callback.on_multirun_start(config)
    atexit.unregister(callback.close_unfinished)  # called by hand below, as the interpreter would at exit
    finished, failed = jobs_in_order(half_failed_sweep)
    child_ids = [run_sweep_job(sweep_dir, job) for job in (finished, failed)]
    # Hydra does not call on_multirun_end after a failed job.
    callback.close_unfinished()

    client = MlflowClient(sqlite_uri(tmp_path))
    assert [client.get_run(child_id).info.status for child_id in child_ids] == ["FINISHED", "FAILED"]
    parent_id = json.loads((sweep_dir / SWEEP_HANDOFF).read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "FAILED"
    assert SWEEP_TABLE in artifact_paths(client, parent_id)
    callback.close_unfinished()  # a closed parent is left alone
    assert client.get_run(parent_id).info.status == "FAILED"


def test_sweep_interrupted_at_exit_ends_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        from omegaconf import OmegaConf
        from rosebench.tracking.sweep_callback import MlflowSweepCallback
        hydra = {{"sweep": {{"dir": "sweep"}}, "overrides": {{"task": ["a=1,2"]}}}}
        config = OmegaConf.create({{"hydra": hydra}})
        MlflowSweepCallback(uri={sqlite_uri(tmp_path)!r}).on_multirun_start(config)
        raise KeyboardInterrupt
        """
    )
    result = run_python("-c", script, cwd=tmp_path)
    assert "KeyboardInterrupt" in result.stderr
    parent_id = json.loads((tmp_path / "sweep" / SWEEP_HANDOFF).read_text())["parent_run_id"]
    assert MlflowClient(sqlite_uri(tmp_path)).get_run(parent_id).info.status == "KILLED"


def test_system_metrics_are_sampled_every_second(tmp_path, profiled_run):
    run_dir = tmp_path / "run"
    with TrackedRun(TrackingSettings(system_metrics=True), run_dir, "with-system-metrics"):
        shutil.copytree(profiled_run, run_dir)
        time.sleep(2.5)
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    metrics = MlflowClient(sqlite_uri(tmp_path)).get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def as_shown(value: float) -> str:
    """A figure as the report's text and Markdown tables show it: 2 decimals, 3 significant digits under 1."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def test_report_on_sweep_folder(tmp_path, capsys, sweep):
    sweep_dir = shutil.copytree(sweep, tmp_path / "sweep")
    results = [read_results(job) for job in jobs_in_order(sweep_dir)]
    out = tmp_path / "table.csv"
    assert (
        report.main(["--sweep", str(sweep_dir), "--format", "csv", "--out", str(out), "--plots", "plots"])
        == 0
    )
    rows = read_csv(out.read_text())
    assert list(rows[0]) == ["run", "num_requests", *HEADLINE, "status"]
    assert [(r["run"], r["num_requests"]) for r in rows] == [
        (r["run"]["name"], str(n)) for r, n in zip(results, (1, 4, 16), strict=True)
    ]
    for metric in ("throughput_completion_tok_s", "ttft_ms_p50"):  # rounded as MLflow holds them
        assert [float(row[metric]) for row in rows] == [rounded(r["metrics"][metric]) for r in results]
    for plot in SWEEP_PLOTS:
        assert (tmp_path / plot).stat().st_size > 0

    def cells(job: dict[str, Any]) -> list[str]:
        shown = [as_shown(rounded(job["metrics"][metric])) for metric in HEADLINE]
        return [job["run"]["name"], str(job["config"]["num_requests"]), *shown, job["run"]["status"]]

    assert report.main(["--sweep", str(sweep_dir), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | num_requests | " + " | ".join(HEADLINE) + " | status |"
    assert lines[1] == "|---|---|" + "---:|" * len(HEADLINE) + "---|"
    assert lines[3] == "| " + " | ".join(cells(results[1])) + " |"

    assert report.main(["--sweep", str(sweep_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "num_requests", *HEADLINE, "status"]
    assert table[3].split() == " ".join(cells(results[2])).split()


def test_report_from_mlflow_matches_folders(tmp_path, capsys, sweep):
    sweep_dir = shutil.copytree(sweep, tmp_path / "sweep")
    uri = sqlite_uri(tmp_path)
    assert upload.main([str(sweep_dir), "--uri", uri, "--experiment", "cmp"]) == 0
    parent_id = json.loads((sweep_dir / SWEEP_HANDOFF).read_text())["parent_run_id"]
    capsys.readouterr()

    assert report.main(["--parent", parent_id, "--uri", uri, "--format", "csv"]) == 0
    by_parent = read_csv(capsys.readouterr().out)
    assert report.main(["--experiment", "cmp", "--uri", uri, "--format", "csv"]) == 0
    by_experiment = read_csv(capsys.readouterr().out)
    assert report.main(["--sweep", str(sweep_dir), "--format", "csv"]) == 0
    by_folder = read_csv(capsys.readouterr().out)
    assert by_parent == by_experiment == by_folder
    assert [r["num_requests"] for r in by_parent] == ["1", "4", "16"]


def test_report_errors_are_one_line(tmp_path, capsys):
    MlflowClient(sqlite_uri(tmp_path / "db")).create_experiment("empty")
    capsys.readouterr()
    assert report.main(["--sweep", str(tmp_path / "missing")]) == 2
    assert report.main(["--experiment", "nope", "--uri", sqlite_uri(tmp_path)]) == 1
    assert not (tmp_path / "mlflow.db").exists()  # a report never creates a store
    assert report.main(["--experiment", "nope", "--uri", sqlite_uri(tmp_path / "db")]) == 1
    assert report.main(["--experiment", "empty", "--uri", sqlite_uri(tmp_path / "db")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(e.startswith("rosebench.report: error: ") for e in errors)


def test_sweep_plot_draws_error_bars_and_keeps_its_legend_off_the_panels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    points = [
        SweepPoint(
            {"num_requests": str(n), "scheduler.max_batch_size": str(b)},
            dict.fromkeys(PLOTTED_METRICS, float(n * b)),  # made-up figures: only the drawing is checked
            {"throughput_completion_tok_s": 10.0 * b},
        )
        for n in (1, 4, 16)
        for b in (1, 2)
    ]
    swept = ["num_requests", "scheduler.max_batch_size"]
    fig = metric_vs_param_figure(points, "throughput_completion_tok_s", "num_requests", swept)
    FigureCanvasAgg(fig).draw()
    [throughput] = fig.axes
    bars = [c for c in throughput.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)  # one series per batch size
    spans = [seg[1][1] - seg[0][1] for c in bars for seg in c.lines[2][0].get_segments()]
    assert sorted(spans) == pytest.approx([20.0] * 3 + [40.0] * 3)  # +- one standard deviation
    [legend] = fig.legends
    assert throughput.get_legend() is None
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_sweep_plot_error_bars_are_each_runs_spread_over_its_own_passes(sweep):
    """From real run folders, as ``rosebench.report --sweep --plots`` reads them: each point's error bar
    is one population standard deviation of that run's timed passes (results.json metrics_std), not a
    spread across the sweep's runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs = jobs_in_order(sweep)
    table = Table.of(row_from_folder(run) for run in runs)
    for metric in PLOTTED_METRICS:
        fig = metric_vs_param_figure(table.points(), metric, "num_requests", table.swept)
        FigureCanvasAgg(fig).draw()
        [ax] = fig.axes
        [bars] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        drawn = sorted((seg[0][0], (seg[1][1] - seg[0][1]) / 2) for seg in bars.lines[2][0].get_segments())
        expected = []
        for run in runs:
            results = read_results(run)
            passes = [figures[metric] for figures in results["passes"]]
            assert len(passes) == 2 and results["metrics_std"][metric] == pytest.approx(pstdev(passes))
            expected.append((results["config"]["num_requests"], pstdev(passes)))
        assert [x for x, _ in drawn] == [n for n, _ in expected], metric
        assert [e for _, e in drawn] == pytest.approx([e for _, e in expected], rel=1e-9, abs=1e-12), metric
    throughput = [[f["throughput_completion_tok_s"] for f in read_results(r)["passes"]] for r in runs]
    spreads = [pstdev(passes) for passes in throughput]
    assert len(set(spreads)) == 3  # three runs, three spreads: a bar shared by the sweep would not match
