"""rosebench.tracking against a real SQLite MLflow store: live runs, faults, uploads, sweeps, reports."""

import atexit
import csv
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from matplotlib.container import ErrorbarContainer
from mlflow import MlflowClient
from omegaconf import OmegaConf

from rosebench import report, upload
from rosebench.tracking import TrackedRun, TrackingSettings, TrackingWarning, log_run_folder
from rosebench.tracking.plots import SweepPoint, metric_vs_param_figure
from rosebench.tracking.store import SWEEP_HANDOFF, resolve_tracking_uri
from rosebench.tracking.sweep_callback import MlflowSweepCallback
from rosebench.tracking.sweep_parent import SWEEP_TABLE
from rosebench.tracking.table import child_runs

REPO = Path(__file__).resolve().parents[1]
HEADLINE = [
    "throughput_completion_tok_s",
    "request_throughput_req_s",
    "ttft_ms_p50",
    "tpot_ms_p50",
    "e2e_ms_p50",
]


def fake_metrics(num_requests: int, scale: float = 1.0) -> dict[str, float]:
    """Plausible figures that depend on num_requests in a known way."""
    return {
        "requests": float(num_requests),
        "throughput_completion_tok_s": 100.0 * num_requests * scale,
        "throughput_total_tok_s": 300.0 * num_requests * scale,
        "request_throughput_req_s": num_requests / 2 * scale,
        "ttft_ms_p50": 10.0 + num_requests,
        "tpot_ms_p50": 5.0,
        "e2e_ms_p50": 50.0 + num_requests,
        "elapsed_total_s": 2.0,
    }


def make_run_folder(
    run_dir: Path,
    num_requests: int = 16,
    *,
    profiled: bool = False,
    status: str = "FINISHED",
    job_num: int | None = None,
    sweep_dir: Path | None = None,
    results: bool = True,
) -> Path:
    """A run folder as the runner writes it: .hydra/, results.json, outputs.jsonl, profile/ when profiled."""
    config = {
        "mode": "online",
        "num_requests": num_requests,
        "seed": 0,
        "engine": {"attention": "paged", "block_size": 16, "dtype": "float32"},
        "workload": {"prompt_len": 32, "output_len": 16, "rate": "inf", "prompt_ids": [1, 2, 3]},
        "profile": {"enabled": profiled},
        "note": "x" * 7000,  # longer than MLflow's 6000-char param limit
    }
    overrides = [f"num_requests={num_requests}"]
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (hydra_dir / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {"job": {"name": "rosebench"}}}))
    if not results:
        return run_dir
    passes = [fake_metrics(num_requests, scale) for scale in (0.9, 1.0, 1.1)]
    profile = None
    if profiled:
        (run_dir / "profile").mkdir()
        with gzip.open(run_dir / "profile" / "trace_0.json.gz", "wt") as f:
            json.dump({"traceEvents": [{"name": "rosebench.engine.decode", "ph": "X", "ts": 0, "dur": 5}]}, f)
        (run_dir / "profile" / "key_averages.txt").write_text(
            "Name  Self CPU\nrosebench.engine.decode  5us\n"
        )
        summary = {
            "window_ms": 0.02,
            "steps": 12,
            "decode_steps": 11,
            "labels": {"rosebench.engine.decode": {"count": 11, "total_ms": 0.005, "share": 0.25}},
            "cpu_ops_per_decode_step": 40.0,
            "kernels_per_decode_step": 30.0,
            "device_busy_ms": 0.015,
            "device_idle_fraction": 0.25,
        }
        (run_dir / "profile" / "summary.json").write_text(json.dumps(summary))
        profile = {"summary": summary, "traces": ["profile/trace_0.json.gz"], "steps": 12}
    document = {
        "config": config,
        "metrics": fake_metrics(num_requests),
        "metrics_std": {"throughput_completion_tok_s": 8.2, "ttft_ms_p50": 0.4},
        "passes": passes,
        "environment": {
            "python": "3.11.7",
            "torch": "2.5.1",
            "cuda": None,
            "device": "cpu",
            "device_name": "cpu",
            "cpu": "x86_64",
            "rosebench": "0.1.0",
            "git_commit": "abc1234",
            "hostname": "bench-host",
        },
        "profile": profile,
        "run": {
            "name": f"online-num_requests={num_requests}",
            "mode": "online",
            "profiled": profiled,
            "status": status,
            "overrides": overrides,
            "job_name": "rosebench",
            "job_id": None if job_num is None else str(job_num),
            "job_num": job_num,
            "sweep_dir": None if sweep_dir is None else str(sweep_dir),
            "started_at": "2026-11-30T05:30:00+00:00",
            "ended_at": "2026-11-30T05:30:07+00:00",
        },
    }
    (run_dir / "results.json").write_text(json.dumps(document, indent=2))
    (run_dir / "outputs.jsonl").write_text(
        "".join(json.dumps({"request_id": i, "completion_ids": [5, 6]}) + "\n" for i in range(num_requests))
    )
    return run_dir


def make_sweep_folder(sweep_dir: Path, values: tuple[int, ...] = (1, 4, 16)) -> list[Path]:
    """A finished basic-launcher sweep over num_requests: multirun.yaml plus one job folder per value."""
    sweep_dir.mkdir(parents=True)
    overrides = ["num_requests=" + ",".join(map(str, values))]
    (sweep_dir / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": {"overrides": {"task": overrides}}}))
    return [
        make_run_folder(sweep_dir / f"num_requests={n}", n, job_num=i, sweep_dir=sweep_dir)
        for i, n in enumerate(values)
    ]


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_tracked_run_logs_the_folder(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    with TrackedRun(TrackingSettings(), run_dir, "online-num_requests=16") as tracked:
        make_run_folder(run_dir, profiled=True)

    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged"] is True and record["error"] is None
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert record["run_id"] == tracked.record.run_id
    client = MlflowClient(record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "online-num_requests=16"
    assert client.get_experiment(run.info.experiment_id).name == "rosebench"
    # Artifacts next to the database, not in whatever ./mlruns the process started in.
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlruns"))

    params = run.data.params
    assert params["num_requests"] == "16"
    assert params["engine.attention"] == "paged"
    assert params["workload.prompt_ids"] == "[1, 2, 3]"
    assert params["profile.enabled"] == "True"
    assert len(params["note"]) == 6000

    metrics = run.data.metrics  # the headline figures only; the rest are in the figures table
    assert metrics["throughput_completion_tok_s"] == pytest.approx(1600.0)
    assert metrics["ttft_ms_p50"] == pytest.approx(26.0)
    assert "requests" not in metrics and "elapsed_total_s" not in metrics
    figures = figures_rows(client, run.info.run_id)
    assert figures["throughput_completion_tok_s"]["std"] == pytest.approx(8.2)
    passes = [figures["throughput_completion_tok_s"][f"pass {n}"] for n in (1, 2, 3)]
    assert passes == pytest.approx([1440.0, 1600.0, 1760.0])
    assert figures["elapsed_total_s"]["mean"] == pytest.approx(2.0)
    assert figures["profile/device_idle_fraction"]["mean"] == pytest.approx(0.25)

    tags = run.data.tags
    assert tags["mode"] == "online"
    assert tags["device"] == "cpu" and tags["device_name"] == "cpu"
    assert tags["torch"] == "2.5.1" and "cuda" not in tags
    assert tags["rosebench_version"] == "0.1.0"
    assert tags["mlflow.source.git.commit"] == "abc1234" and "git_commit" not in tags
    assert tags["profiled"] == "yes"
    assert "hydra_job_name" not in tags
    assert json.loads(tags["hydra_overrides"]) == ["num_requests=16"]

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


def test_artifacts_off_and_tracking_off(tmp_path):
    logged = tmp_path / "logged"
    with TrackedRun(TrackingSettings(artifacts=False), logged, "no-artifacts"):
        make_run_folder(logged)
    run_id = json.loads((logged / "tracking.json").read_text())["run_id"]
    client = MlflowClient(sqlite_uri(tmp_path))
    assert client.get_run(run_id).data.metrics["tpot_ms_p50"] == 5.0
    assert client.list_artifacts(run_id) == []

    (tmp_path / "mlflow.db").unlink()
    off = tmp_path / "off"
    with TrackedRun(OmegaConf.create({"enabled": False}), off, "off"):
        make_run_folder(off)
    assert json.loads((off / "tracking.json").read_text())["logged"] is False
    assert not (tmp_path / "mlflow.db").exists()


def test_failing_run_ends_failed_and_ctrl_c_ends_killed(tmp_path):
    failed, killed = tmp_path / "failed", tmp_path / "killed"
    with pytest.raises(RuntimeError, match="out of memory"), TrackedRun(TrackingSettings(), failed, "failed"):
        make_run_folder(failed)
        raise RuntimeError("out of memory")
    with pytest.raises(KeyboardInterrupt), TrackedRun(TrackingSettings(), killed, "killed"):
        make_run_folder(killed, results=False)  # interrupted before results.json was written
        raise KeyboardInterrupt

    client = MlflowClient(sqlite_uri(tmp_path))
    assert (
        client.get_run(json.loads((failed / "tracking.json").read_text())["run_id"]).info.status == "FAILED"
    )
    record = json.loads((killed / "tracking.json").read_text())
    assert record["logged"] is True
    run = client.get_run(record["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.params["num_requests"] == "16"  # what existed (Hydra's config) was kept
    assert ".hydra/config.yaml" in artifact_paths(client, run.info.run_id)


def test_refused_store_warns_fast_then_upload_logs_once(tmp_path):
    run_dir = tmp_path / "run"
    settings = TrackingSettings(uri=f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    warned = pytest.warns(TrackingWarning, match=r"python -m rosebench\.upload .*run")
    with warned, TrackedRun(settings, run_dir, "online-num_requests=16"):
        make_run_folder(run_dir)
    assert time.monotonic() - started < 60  # MLflow's default retries would take minutes
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
    assert run.data.metrics["throughput_completion_tok_s"] == pytest.approx(1600.0)
    assert run.info.start_time == 1796016600000  # the benchmark's own start, not the upload's

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


def test_upload_sweep_folder_makes_parent_and_children(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "2026-11-30" / "05-30-00"
    jobs = make_sweep_folder(sweep)
    uri = sqlite_uri(tmp_path)
    assert upload.main([str(sweep), "--uri", uri]) == 0
    handoff = json.loads((sweep / SWEEP_HANDOFF).read_text())

    client = MlflowClient(uri)
    parent = client.get_run(handoff["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["swept_keys"] == "num_requests"
    children = child_runs(client, parent.info.run_id)
    assert sorted(c.data.params["num_requests"] for c in children) == ["1", "16", "4"]
    assert {json.loads((j / "tracking.json").read_text())["run_id"] for j in jobs} == {
        c.info.run_id for c in children
    }
    assert {SWEEP_TABLE, "plots/metrics_vs_num_requests.png"} <= artifact_paths(client, parent.info.run_id)

    capsys.readouterr()
    assert upload.main([str(sweep), "--uri", uri]) == 0
    assert "skipped" in capsys.readouterr().out
    assert len(child_runs(client, parent.info.run_id)) == 3


def test_log_run_folder_as_child(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("children", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(experiment_id).info.run_id
    run_dir = make_run_folder(tmp_path / "job", 4, status="FAILED")
    run_id = log_run_folder(run_dir, TrackingSettings(uri=uri), parent, experiment_id)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FAILED"  # the folder's own status


def fake_hydra_config(sweep_dir: Path, task: list[str]):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": task}}})


def run_sweep_job(sweep_dir: Path, num_requests: int, job_num: int, status: str = "FINISHED") -> str:
    job_dir = sweep_dir / f"num_requests={num_requests}"
    with TrackedRun(TrackingSettings(), job_dir, f"online-num_requests={num_requests}", sweep_dir=sweep_dir):
        make_run_folder(job_dir, num_requests, job_num=job_num, sweep_dir=sweep_dir, status=status)
    return json.loads((job_dir / "tracking.json").read_text())["run_id"]


def test_sweep_callback_parent_children_table_and_plots(tmp_path):
    sweep = tmp_path / "multirun" / "s1"
    config = fake_hydra_config(sweep, ["num_requests=1,4,16", "mode=online"])
    callback = MlflowSweepCallback(uri=None, experiment="sweeps")
    callback.on_multirun_start(config)
    assert mlflow.active_run() is None  # the basic launcher runs jobs in this process
    handoff = json.loads((sweep / SWEEP_HANDOFF).read_text())
    client = MlflowClient(handoff["tracking_uri"])
    parent = client.get_run(handoff["parent_run_id"])
    assert parent.info.status == "RUNNING"
    assert parent.info.run_name == "sweep num_requests=1,4,16 (mode=online)"  # swept first, then fixed
    assert json.loads(parent.data.tags["sweep_overrides"]) == ["num_requests=1,4,16", "mode=online"]
    assert client.get_experiment(handoff["experiment_id"]).name == "sweeps"

    child_ids = [run_sweep_job(sweep, n, i) for i, n in enumerate((1, 4, 16))]
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
    assert [r["num_requests"] for r in rows] == ["1", "4", "16"]
    assert [r["throughput_completion_tok_s"] for r in rows] == [100.0, 400.0, 1600.0]
    assert {r["status"] for r in rows} == {"FINISHED"}
    assert "plots/metrics_vs_num_requests.png" in artifact_paths(client, parent.info.run_id)
    # A collapsed sweep reads at a glance: the swept values, the fixed ones, the best child's figures.
    assert parent.data.params["num_requests"] == "1,4,16" and parent.data.params["mode"] == "online"
    assert parent.data.metrics["throughput_completion_tok_s"] == 1600.0  # higher is better
    assert parent.data.metrics["ttft_ms_p50"] == 11.0  # lower is better: num_requests=1's 10 + 1


def test_sweep_exit_hook_fails_parent_after_failed_job(tmp_path):
    sweep = tmp_path / "multirun" / "s2"
    config = fake_hydra_config(sweep, ["num_requests=1,4"])
    callback = MlflowSweepCallback(uri=sqlite_uri(tmp_path))
    callback.on_multirun_start(config)
    atexit.unregister(callback.close_unfinished)  # called by hand below, as the interpreter would at exit
    run_sweep_job(sweep, 1, 0)
    run_sweep_job(sweep, 4, 1, status="FAILED")
    # Hydra does not call on_multirun_end after a failed job.
    callback.close_unfinished()

    client = MlflowClient(sqlite_uri(tmp_path))
    parent_id = json.loads((sweep / SWEEP_HANDOFF).read_text())["parent_run_id"]
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


def test_system_metrics_are_sampled_every_second(tmp_path):
    run_dir = tmp_path / "run"
    with TrackedRun(TrackingSettings(system_metrics=True), run_dir, "with-system-metrics"):
        make_run_folder(run_dir)
        time.sleep(2.5)
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    metrics = MlflowClient(sqlite_uri(tmp_path)).get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_report_on_sweep_folder(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_sweep_folder(sweep)
    out = tmp_path / "table.csv"
    assert report.main(["--sweep", str(sweep), "--format", "csv", "--out", str(out), "--plots", "plots"]) == 0
    rows = read_csv(out.read_text())
    assert list(rows[0]) == ["run", "num_requests", *HEADLINE, "status"]
    assert [(r["run"], r["num_requests"]) for r in rows] == [
        ("online-num_requests=1", "1"),
        ("online-num_requests=4", "4"),
        ("online-num_requests=16", "16"),
    ]
    assert [float(r["throughput_completion_tok_s"]) for r in rows] == [100.0, 400.0, 1600.0]
    assert [float(r["ttft_ms_p50"]) for r in rows] == [11.0, 14.0, 26.0]
    assert (tmp_path / "plots" / "metrics_vs_num_requests.png").stat().st_size > 0

    assert report.main(["--sweep", str(sweep), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | num_requests | " + " | ".join(HEADLINE) + " | status |"
    assert lines[1] == "|---|---|" + "---:|" * len(HEADLINE) + "---|"
    assert lines[3] == "| online-num_requests=4 | 4 | 400.00 | 2.00 | 14.00 | 5.00 | 54.00 | FINISHED |"

    assert report.main(["--sweep", str(sweep)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "num_requests", *HEADLINE, "status"]
    assert table[3].split() == [
        "online-num_requests=16",
        "16",
        "1600.00",
        "8.00",
        "26.00",
        "5.00",
        "66.00",
        "FINISHED",
    ]


def test_report_from_mlflow_matches_folders(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_sweep_folder(sweep, (2, 8))
    uri = sqlite_uri(tmp_path)
    assert upload.main([str(sweep), "--uri", uri, "--experiment", "cmp"]) == 0
    parent_id = json.loads((sweep / SWEEP_HANDOFF).read_text())["parent_run_id"]
    capsys.readouterr()

    assert report.main(["--parent", parent_id, "--uri", uri, "--format", "csv"]) == 0
    by_parent = read_csv(capsys.readouterr().out)
    assert report.main(["--experiment", "cmp", "--uri", uri, "--format", "csv"]) == 0
    by_experiment = read_csv(capsys.readouterr().out)
    assert report.main(["--sweep", str(sweep), "--format", "csv"]) == 0
    by_folder = read_csv(capsys.readouterr().out)
    assert by_parent == by_experiment == by_folder
    assert [r["num_requests"] for r in by_parent] == ["2", "8"]


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
            fake_metrics(n, scale=b),
            {"throughput_completion_tok_s": 10.0 * b},
        )
        for n in (1, 4, 16)
        for b in (1, 2)
    ]
    fig = metric_vs_param_figure(points, "num_requests", ["num_requests", "scheduler.max_batch_size"])
    FigureCanvasAgg(fig).draw()
    throughput = fig.axes[0]
    bars = [c for c in throughput.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)  # one series per batch size
    spans = [seg[1][1] - seg[0][1] for c in bars for seg in c.lines[2][0].get_segments()]
    assert sorted(spans) == pytest.approx([20.0] * 3 + [40.0] * 3)  # +- one standard deviation
    [legend] = fig.legends
    assert throughput.get_legend() is None
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
