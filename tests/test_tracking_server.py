"""rosebench.tracking through a real `mlflow server` (HTTP store, proxied artifacts)."""

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import assert_ok, describe, read_results, run_cli
from mlflow import MlflowClient
from test_tracking import artifact_paths, run_benchmark

from rosebench.tracking import TrackedRun, TrackingSettings
from rosebench.tracking.mlflow_log import rounded
from rosebench.tracking.store import run_exists, ui_hint

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s} s")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(server: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the server's whole process group (uvicorn workers, job consumers), SIGKILL what remains."""
    pgid = server.pid  # start_new_session=True: the server leads its own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(pgid):
            break
        os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout_s
        while group_alive(pgid) and time.monotonic() < deadline:
            server.poll()  # reap the leader so that it does not linger as a zombie
            time.sleep(0.2)
    server.wait(timeout=timeout_s)
    assert not group_alive(pgid), "mlflow server left processes behind"


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",  # the default 4 uvicorn workers only slow the start on a small CI machine
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        yield url
    finally:
        stop_group(server)
        log.close()


def test_run_folder_through_server(mlflow_server, tmp_path, monkeypatch):
    made = run_benchmark(tmp_path / "made", "num_requests=8", "profile.enabled=true")
    results = read_results(made)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "run"
    with TrackedRun(TrackingSettings(uri=mlflow_server), run_dir, results["run"]["name"]):
        shutil.copytree(made, run_dir)  # the runner writes the folder while the run is live

    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged"] is True and record["tracking_uri"] == mlflow_server
    # The runs table, not MLflow's GenAI overview, in the view that shows the headline metrics.
    link = f"{mlflow_server}/#/experiments/{record['experiment_id']}/runs?workflowType=machine_learning"
    assert record["url"] == f"{link}&viewStateShareKey=rosebench"
    assert ui_hint(record["tracking_uri"], record["run_id"], record["url"]).endswith(record["url"])

    client = MlflowClient(mlflow_server)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["num_requests"] == "8"
    throughput = rounded(results["metrics"]["throughput_completion_tok_s"])
    assert run.data.metrics["throughput_completion_tok_s"] == throughput
    assert run.data.tags["profiled"] == "yes"
    assert {
        "results.json",
        "figures.json",
        "profile/trace_0.json.gz",
        ".hydra/config.yaml",
    } <= artifact_paths(client, record["run_id"])
    # Proxied artifacts land under the server's destination, not in the client's cwd.
    assert list(Path(tmp_path / "artifacts").rglob("trace_0.json.gz"))
    assert not (tmp_path / "mlruns").exists()
    assert run_exists(client, record["run_id"]) and not run_exists(client, "0" * 32)


def _files_containing(root: Path, secret: bytes) -> list[str]:
    """Every file under `root` holding `secret`, gzipped traces read through."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            if secret in data:
                found.append(str(path.relative_to(root)))
    return found


def test_password_in_the_tracking_uri_is_written_nowhere(mlflow_server, tmp_path):
    """A user:password URI connects, and the password appears in no file rosebench or the store wrote, in
    no output, and nowhere in MLflow (params, tags, artifacts), for a run and for a sweep."""
    secret = "s3cret-Pw9"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    work = tmp_path / "work"
    work.mkdir()
    tiny = [
        "engine=tiny",
        "warmup=0",
        "repeat=1",
        "num_requests=2",
        "max_new_tokens=3",
        f"tracking.uri={uri}",
    ]
    single = run_cli(work, *tiny, "profile.enabled=true", "hydra.run.dir=run")
    sweep = run_cli(work, "--multirun", *tiny, "seed=1,2", "hydra.sweep.dir=sweep")
    for proc in (single, sweep):
        assert_ok(proc)
        assert secret not in proc.stdout + proc.stderr, describe(proc)
    assert f"{mlflow_server}/#/experiments/" in single.stdout  # the printed link carries no credentials

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 4  # the run, the sweep's parent and its two children
    for run in runs:
        logged = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        assert secret not in logged, run.info.run_id
    record = json.loads((work / "run" / "tracking.json").read_text())
    assert record["logged"] and record["tracking_uri"] == uri.replace(secret, "***")
    assert read_results(work / "run")["config"]["tracking"]["uri"] == record["tracking_uri"]
    assert _files_containing(work, secret.encode()) == []
    assert _files_containing(tmp_path / "artifacts", secret.encode()) == []
    assert secret.encode() not in (tmp_path / "server.db").read_bytes()


def test_a_short_password_is_redacted_in_the_uri_only(mlflow_server, tmp_path):
    """A password that is also an ordinary value ('8') is hidden where it stands, in the URI, and nowhere
    else: max_new_tokens=8 and max_batched_tokens=2048 read as typed in .hydra, results.json and MLflow."""
    uri = mlflow_server.replace("http://", "http://dave:8@")
    shown = mlflow_server.replace("http://", "http://dave:***@")
    overrides = ["max_new_tokens=8", "scheduler.max_batched_tokens=2048", f"tracking.uri={uri}"]
    proc = run_cli(
        tmp_path, "engine=tiny", "warmup=0", "repeat=1", "num_requests=2", *overrides, "hydra.run.dir=run"
    )
    assert_ok(proc)
    assert "dave:8@" not in proc.stdout + proc.stderr, describe(proc)
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "max_new_tokens: 8\n" in config and "max_batched_tokens: 2048\n" in config, config
    assert f"uri: {shown}\n" in config and "dave:8@" not in config
    results = read_results(tmp_path / "run")
    typed = ["max_new_tokens=8", "scheduler.max_batched_tokens=2048", f"tracking.uri={shown}"]
    assert [o for o in results["run"]["overrides"] if o in typed] == typed, results["run"]["overrides"]
    assert results["config"]["tracking"]["uri"] == shown
    [run] = MlflowClient(mlflow_server).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_server).search_experiments()]
    )
    assert run.data.params["max_new_tokens"] == "8"
    assert run.data.params["scheduler.max_batched_tokens"] == "2048"
    assert json.loads(run.data.tags["hydra_overrides"])[-1] == f"tracking.uri={shown}"
