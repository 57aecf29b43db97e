"""Sweeps through a real Slurm cluster (hydra/launcher=slurm_cpu, submitit): the single-node cluster that
`.ci/run` starts (SLURM_CONF points at it). Skipped where none runs, and `.ci/run` says why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import assert_ok, read_results, run_cli, start_cli
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from test_tracking_server import mlflow_server  # noqa: F401 (a fixture)

from rosebench.tracking.mlflow_log import rounded


def _cluster_up() -> bool:
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        return False
    state = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    )
    return state.returncode == 0 and "idle" in state.stdout


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _cluster_up(), reason="no Slurm cluster (SLURM_CONF unset or its node is down)"),
]

TINY = ("hydra/launcher=slurm_cpu", "engine=tiny", "max_new_tokens=4", "warmup=0")
LONG = ("repeat=100000", "num_requests=2")  # passes until Slurm stops the job


def sweep_runs(uri: str) -> tuple[Run, list[Run]]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rosebench").experiment_id])
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    return parent, [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


def assert_stopped_with_passes(uri: str, sweep: Path, signal_name: str) -> None:
    """The point Slurm stopped kept its finished passes; its run is KILLED; the parent is not RUNNING."""
    parent, [child] = sweep_runs(uri)
    [folder] = job_folders(sweep)
    results = read_results(folder)
    assert results["run"]["status"] == "KILLED" and len(results["passes"]) >= 1
    assert child.info.status == "KILLED"
    throughput = results["metrics"]["throughput_completion_tok_s"]
    assert child.data.metrics["throughput_completion_tok_s"] == rounded(throughput)
    assert parent.info.status in ("FAILED", "KILLED")
    log = submitit_logs(sweep)
    assert f"interrupted by {signal_name} during pass" in log, log[-2000:]


def test_three_point_sweep_lands_in_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    proc = run_cli(
        tmp_path,
        "--multirun",
        *TINY,
        "repeat=2",
        "num_requests=1,2,3",
        f"tracking.uri={uri}",
        "hydra.sweep.dir=sweep",
    )
    wall = time.monotonic() - started
    assert_ok(proc)
    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    jobs = {}
    for child in children:
        results = read_results(Path(child.data.tags["run_dir"]))
        throughput = results["metrics"]["throughput_completion_tok_s"]
        assert child.data.metrics["throughput_completion_tok_s"] == rounded(throughput)
        jobs[child.data.params["num_requests"]] = child.data.tags["slurm_job_id"]
    # The console says which job runs which point, and the runs carry the same ids.
    announced = dict(re.findall(r"Slurm job (\d+_\d+) runs sweep point #(\d+)", proc.stderr))
    assert sorted(announced.values()) == ["0", "1", "2"], proc.stderr
    assert {jobs[n]: str(int(n) - 1) for n in jobs} == announced
    # Accounting is off on this cluster: one line says so, no sacct warnings.
    assert "sacct" not in proc.stdout + proc.stderr.replace("(sacct fails here)", ""), proc.stderr
    assert "Traceback" not in proc.stderr
    print(f"3-point slurm_cpu sweep: {wall:.1f} s wall")


def submitit_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sweep.glob(".submitit/*/*.err"))


def start_long_sweep(tmp_path: Path, uri: str) -> tuple[subprocess.Popen, str]:
    """A one-point sweep whose job runs passes until Slurm stops it: the launcher and the job's id, once
    the job's third pass has begun."""
    sweep = tmp_path / "sweep"
    args = ("--multirun", *TINY, *LONG, f"tracking.uri={uri}", f"hydra.sweep.dir={sweep}")
    launcher = start_cli(tmp_path, *args, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "rosebench: pass 3/" not in submitit_logs(sweep):
        if time.monotonic() > deadline or launcher.poll() is not None:
            launcher.kill()
            pytest.fail(f"the job never ran its passes:\n{submitit_logs(sweep)[-2000:]}")
        time.sleep(0.5)
    queue = subprocess.run(["squeue", "--noheader", "--me", "--format=%i"], capture_output=True, text=True)
    [job_id] = queue.stdout.split()
    return launcher, job_id


def stop_and_check(tmp_path: Path, uri: str, slurm_command: str, signal_name: str) -> None:
    """Run ``slurm_command`` (``{job}`` stands for the job id) once the passes run; check what was kept."""
    launcher, job_id = start_long_sweep(tmp_path, uri)
    try:
        subprocess.run(slurm_command.format(job=job_id).split(), check=True)
        launcher.communicate(timeout=120)  # stderr is a pipe: read it to the end
    finally:
        launcher.kill()
    assert launcher.returncode != 0  # Hydra reports the stopped job
    assert_stopped_with_passes(uri, tmp_path / "sweep", signal_name)


def test_time_limit_keeps_the_finished_passes(tmp_path: Path) -> None:
    """The job's limit cut to 1 minute once its passes run: Slurm sends submitit's warning signal
    (SIGUSR2, asked for 120 s before the limit, so at its next limit check, within 30 s), then SIGTERM and
    SIGKILL at the limit. The run stops at the first signal with its finished passes. (Submitted with a
    1-minute limit instead, the warning came at once, at times before the run existed: Slurm may send it
    up to 60 s early.)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stop_and_check(tmp_path, uri, "scontrol update JobId={job} TimeLimit=1", "SIGUSR2")


def test_scancel_keeps_the_finished_passes(tmp_path: Path) -> None:
    """scancel: SIGTERM, then SIGKILL after KillWait."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stop_and_check(tmp_path, uri, "scancel {job}", "SIGTERM")


def test_sweep_through_a_tracking_server(tmp_path: Path, mlflow_server: str) -> None:  # noqa: F811
    """How a team shares results across nodes: the jobs log to one `mlflow server`."""
    proc = run_cli(
        tmp_path,
        "--multirun",
        *TINY,
        "repeat=2",
        "num_requests=1,2",
        f"tracking.uri={mlflow_server}",
        "hydra.sweep.dir=sweep",
    )
    assert_ok(proc)
    parent, children = sweep_runs(mlflow_server)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["num_requests"] for c in children) == ["1", "2"]
    assert all(re.fullmatch(r"\d+_\d+", c.data.tags["slurm_job_id"]) for c in children)
