"""rosebench.upload through the real CLIs: uploading a folder again, to its own store or another one, never
makes a second run; a run its killed process left RUNNING is ended, not duplicated; no password is printed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from cli_helpers import FAST, assert_ok, describe, run_cli, run_tool, start_cli
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

pytestmark = pytest.mark.slow

TINY = ("engine=tiny", "max_new_tokens=4", "warmup=0")
SWEEP_PARENT_TAG = "rosebench_sweep_parent"


def all_runs(uri: str) -> list[Run]:
    """Every run of every experiment in the store."""
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def upload(cwd: Path, folder: Path, uri: str) -> subprocess.CompletedProcess[str]:
    proc = run_tool(cwd, "upload", str(folder), "--uri", uri)
    assert_ok(proc)
    return proc


def sigkill_mid_pass(cwd: Path, *args: str, stop_at: str = "rosebench: pass 1/") -> None:
    """Start ``python -m rosebench ARGS`` and SIGKILL its whole process group once stderr has a line starting
    with `stop_at` (a timed pass finished): nothing in it can run then, so its MLflow runs stay RUNNING."""
    proc = start_cli(cwd, *args, stdout=subprocess.DEVNULL, start_new_session=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(stop_at):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]


def test_upload_after_sigkill_ends_the_run_it_belongs_to(tmp_path: Path) -> None:
    """SIGKILL leaves the live run RUNNING and no tracking.json: the upload finds the run by its run_dir
    tag, logs the folder into it and ends it KILLED (no finished results); uploading again, after an upload
    to another store, adds nothing."""
    a, b = f"sqlite:///{tmp_path / 'A.db'}", f"sqlite:///{tmp_path / 'B.db'}"
    run_dir = tmp_path / "run"
    sigkill_mid_pass(
        tmp_path, *TINY, "num_requests=8", "max_new_tokens=64", "repeat=100000", f"tracking.uri={a}",
        "hydra.run.dir=run",
    )  # fmt: skip
    [killed] = all_runs(a)
    assert killed.info.status == "RUNNING" and killed.data.tags["run_dir"] == str(run_dir.resolve())
    assert not (run_dir / "tracking.json").exists() and not (run_dir / "results.json").exists()

    upload(tmp_path, run_dir, a)
    [run] = all_runs(a)
    assert run.info.run_id == killed.info.run_id, "the upload made a second run"
    assert run.info.status == "KILLED"
    assert run.data.params["num_requests"] == "8"  # the folder's config was logged into it

    for uri in (b, a, b):  # to another store and back: each holds the folder once
        upload(tmp_path, run_dir, uri)
    [again] = all_runs(a)
    assert again.info.run_id == killed.info.run_id and again.info.status == "KILLED"
    assert len(all_runs(b)) == 1


def test_upload_of_a_logged_run_to_its_store_and_another_is_skipped(tmp_path: Path) -> None:
    """A finished run logged live to A: uploading it to B, then to A, then to B, then to A without its
    tracking.json leaves one run in each store."""
    a, b = f"sqlite:///{tmp_path / 'A.db'}", f"sqlite:///{tmp_path / 'B.db'}"
    run_dir = tmp_path / "run"
    proc = run_cli(tmp_path, *TINY, "repeat=1", "num_requests=2", f"tracking.uri={a}", "hydra.run.dir=run")
    assert_ok(proc)
    [live] = all_runs(a)
    for uri in (b, a, b):
        proc = upload(tmp_path, run_dir, uri)
    assert "skipped" in proc.stdout, describe(proc)
    (run_dir / "tracking.json").unlink()
    proc = upload(tmp_path, run_dir, a)
    assert "skipped" in proc.stdout, describe(proc)
    assert [r.info.run_id for r in all_runs(a)] == [live.info.run_id]
    [copy] = all_runs(b)
    assert copy.info.status == "FINISHED" and copy.data.params["num_requests"] == "2"


def assert_one_sweep(uri: str, children: int) -> None:
    runs = all_runs(uri)
    parents = [r for r in runs if SWEEP_PARENT_TAG in r.data.tags]
    assert len(parents) == 1, f"{uri}: {len(parents)} sweep parents"
    [parent] = parents
    kids = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert len(kids) == children and len(runs) == children + 1, f"{uri}: {len(runs)} runs"
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]


def test_a_sweep_uploaded_to_two_stores_in_turn_is_one_sweep_in_each(tmp_path: Path) -> None:
    """A 2-point sweep logged live to A, uploaded to B, to A, to B: one parent and two children each."""
    a, b = f"sqlite:///{tmp_path / 'A.db'}", f"sqlite:///{tmp_path / 'B.db'}"
    sweep = ("--multirun", "num_requests=1,2", *TINY, "repeat=1", f"tracking.uri={a}")
    proc = run_cli(tmp_path, *sweep, "hydra.sweep.dir=sweep")
    assert_ok(proc)
    assert_one_sweep(a, 2)
    for uri in (b, a, b):
        upload(tmp_path, tmp_path / "sweep", uri)
        assert_one_sweep(uri, 2)
    assert_one_sweep(a, 2)


def test_a_job_folder_uploaded_alone_joins_its_sweep_when_the_sweep_is_uploaded(tmp_path: Path) -> None:
    """A sweep run without tracking; one job folder uploaded alone (a standalone run), then the whole sweep:
    that run is put under the sweep's parent rather than logged twice or left outside the sweep."""
    a = f"sqlite:///{tmp_path / 'A.db'}"
    assert_ok(
        run_cli(
            tmp_path, "--multirun", "num_requests=1,2", *FAST, "max_new_tokens=4", "hydra.sweep.dir=sweep"
        )
    )
    [first, _] = sorted(d for d in (tmp_path / "sweep").iterdir() if (d / "results.json").is_file())
    upload(tmp_path, first, a)
    [alone] = all_runs(a)
    upload(tmp_path, tmp_path / "sweep", a)
    assert_one_sweep(a, 2)
    assert alone.info.run_id in {r.info.run_id for r in all_runs(a)}


def test_a_killed_sweep_uploaded_elsewhere_first_is_ended_in_its_own_store(tmp_path: Path) -> None:
    """A 2-point sweep into A SIGKILLed during its second point: A shows the parent and that child RUNNING.
    Uploaded to B first (one parent, the finished child), then to A: A's parent and children are found by
    their tags, the killed child is ended with its folder's content, nothing is added; another round to
    both stores adds nothing either."""
    a, b = f"sqlite:///{tmp_path / 'A.db'}", f"sqlite:///{tmp_path / 'B.db'}"
    sigkill_mid_pass(
        tmp_path, "--multirun", "repeat=1,100000", *TINY, "num_requests=2", "max_new_tokens=64",
        f"tracking.uri={a}", "hydra.sweep.dir=sweep", stop_at="rosebench: pass 1/100000",
    )  # fmt: skip
    before = {r.info.run_id: r.info.status for r in all_runs(a)}
    assert sorted(before.values()) == ["FINISHED", "RUNNING", "RUNNING"]
    upload(tmp_path, tmp_path / "sweep", b)
    assert_one_sweep(b, 1)  # B never saw the killed point, which left no results
    proc = upload(tmp_path, tmp_path / "sweep", a)
    assert "never ran" not in proc.stdout, describe(proc)
    assert_one_sweep(a, 2)
    after = {r.info.run_id: r.info.status for r in all_runs(a)}
    assert set(after) == set(before), "the upload made new runs in A"
    assert sorted(after.values()) == ["FAILED", "FINISHED", "KILLED"]  # parent, first point, killed point
    for uri in (b, a):
        upload(tmp_path, tmp_path / "sweep", uri)
    assert_one_sweep(a, 2)
    assert_one_sweep(b, 1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # free once the socket closes: nothing listens there


def test_upload_to_an_unreachable_server_prints_no_password(tmp_path: Path) -> None:
    secret = "Pw-7s3cret"
    assert_ok(run_cli(tmp_path, *FAST, "num_requests=1", "max_new_tokens=2", "hydra.run.dir=run"))
    uri = f"http://alice:{secret}@127.0.0.1:{closed_port()}"
    proc = run_tool(tmp_path, "upload", str(tmp_path / "run"), "--uri", uri)
    assert proc.returncode != 0, describe(proc)
    assert secret not in proc.stdout + proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    [line] = proc.stderr.splitlines()
    assert line.startswith("rosebench.upload: error:") and "alice:***@127.0.0.1" in line, line
