"""A run knows when the machine was busy: a real busy process beside a real run, and the probe's arithmetic
against processes whose CPU use is known (a spinning loop uses one core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from cli_helpers import assert_ok, describe, read_results, run_cli
from mlflow import MlflowClient

from rosebench.runner.conditions import (
    CONTENDED_SHARE,
    RESOLUTION_TICKS,
    ConditionsProbe,
    cores,
    machine_busy_s,
)

SPIN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"  # stops by itself


@contextmanager
def spinners(count: int, own: bool = False) -> Iterator[list[psutil.Process]]:
    """``count`` processes that each keep one core busy. ``own``: children of this process; otherwise
    orphaned through a shell that exits at once, so that they are no part of this process's tree."""
    if own:
        procs = [psutil.Process(subprocess.Popen([sys.executable, "-c", SPIN]).pid) for _ in range(count)]
    else:
        script = "".join(f"{sys.executable} -c '{SPIN}' >/dev/null 2>&1 & echo $!\n" for _ in range(count))
        pids = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
        procs = [psutil.Process(int(pid)) for pid in pids.split()]
        assert all(p.ppid() != psutil.Process().pid for p in procs)
    try:
        time.sleep(0.3)  # running before the measurement starts
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        psutil.wait_procs(procs, timeout=10)


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _measure_beside(spinner: psutil.Process) -> tuple[float, float, float]:
    """The probe's other-CPU seconds over 1.5 s of sleep, the spinner's CPU seconds and the run's cores'
    busy seconds (every process's) over the same window."""
    busy_before, spun_before = machine_busy_s(cores()), _cpu_s(spinner)
    with ConditionsProbe() as probe:
        time.sleep(1.5)
    busy, spun = machine_busy_s(cores()) - busy_before, _cpu_s(spinner) - spun_before
    return probe.conditions.other_cpu_s, spun, busy


def test_the_probe_counts_other_processes_and_not_this_ones_children() -> None:
    """A spinning process outside this process tree is other work, counted whole (up to the counters'
    resolution); the same loop as this process's child is this run's own work, not counted. Both hold on a
    busy machine too: other load only adds to what the probe and the machine's counters see."""
    resolution_s = RESOLUTION_TICKS * len(cores()) / os.sysconf("SC_CLK_TCK")
    with spinners(1) as [outside]:
        other, spun, _ = _measure_beside(outside)
    assert spun > 0.3, "the spinner got no CPU: nothing was measured"
    assert other >= spun - 2 * resolution_s, (other, spun)
    with spinners(1, own=True) as [child]:
        other, spun, busy = _measure_beside(child)
    assert spun > 0.3, "the spinner got no CPU: nothing was measured"
    assert other <= busy - spun + 2 * resolution_s, (other, spun, busy)


def test_a_busy_neighbour_is_recorded_warned_and_tagged(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = [
        "engine=tiny",
        "warmup=0",
        "repeat=2",
        "num_requests=16",
        "max_new_tokens=64",
        "engine.num_threads=2",
        f"tracking.uri={uri}",
        "hydra.run.dir=run",
    ]
    with spinners(len(cores())):  # every core has a neighbour
        proc = run_cli(tmp_path, *run)
    assert_ok(proc)
    results = read_results(tmp_path / "run")
    shares = [p["contention"] for p in results["passes"]]
    assert len(shares) == 2 and all(share >= 2 * CONTENDED_SHARE for share in shares), shares
    assert results["metrics"]["contention_max"] == max(shares)
    assert [p["torch_threads"] for p in results["passes"]] == [2, 2]
    assert all(p["load_avg_1m"] > 0 and p["cores"] == len(cores()) for p in results["passes"])
    assert results["run"]["contended"] is True
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("rosebench: warning: ")]
    [busy] = [line for line in warnings if "the machine was busy" in line]
    assert f"contention_max {max(shares):.2f} > {CONTENDED_SHARE:.2f}" in busy, busy
    [oversubscribed] = [line for line in warnings if "oversubscribed" in line]
    assert "torch ran 2 intra-op threads" in oversubscribed, describe(proc)
    assert "other processes' CPU (max)" in proc.stdout

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "rosebench"]
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.data.tags["contended"] == "yes"
    assert logged.data.metrics["contention_max"] == pytest.approx(max(shares), rel=1e-3)
    figures = json.loads(
        Path(client.download_artifacts(logged.info.run_id, "figures.json", str(tmp_path))).read_text()
    )
    assert "contention" in figures["data"][0] or any("contention" in str(row) for row in figures["data"])


def test_results_say_what_threads_ran(tmp_path: Path) -> None:
    """The conditions are recorded for every timed pass of a run, with the threads the run used."""
    proc = run_cli(
        tmp_path,
        "engine=tiny",
        "tracking=off",
        "warmup=0",
        "repeat=2",
        "engine.num_threads=1",
        "hydra.run.dir=r",
    )
    assert_ok(proc)
    results = read_results(tmp_path / "r")
    for one_pass in results["passes"]:
        assert one_pass["torch_threads"] == 1
        assert 0.0 <= one_pass["contention"] <= 1.0 and 0.0 <= one_pass["cpu_steal"] <= 1.0
    assert results["run"]["contended"] == (results["metrics"]["contention_max"] > CONTENDED_SHARE)
