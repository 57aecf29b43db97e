"""The profiled pass as a user meets it: the real ``python -m rosebench`` in a subprocess. A profile figure
with no samples is absent (printed ``-``, left out of results.json and MLflow), never 0; stderr holds only
rosebench's lines, none of libkineto's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cli_helpers import FAST, assert_ok, describe, read_results, run_cli, run_tool

from rosebench.results import RunResults
from rosebench.tracking.mlflow_log import PROFILE_PREFIX, figures_table

NOTHING_RECORDED = ("profile.enabled=true", "profile.skip_first=1000", "hydra.run.dir=run")
# Figures that need samples: a window, decode steps to divide by, device events.
PER_DECODE_STEP = ("cpu_ops_per_decode_step", "kernels_per_decode_step")
WINDOW_FIGURES = ("window_ms", "device_busy_ms", "device_idle_fraction")


def _profile_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("profile: ")]
    assert len(lines) == 1, stdout
    return lines[0]


def _profile_rows(results: RunResults) -> dict[str, float]:
    """The profile's rows of the figures table that MLflow gets (``figures.json``)."""
    table = figures_table(results)
    return {
        name.removeprefix(PROFILE_PREFIX): mean
        for name, mean in zip(table["metric"], table["mean"], strict=True)
        if name.startswith(PROFILE_PREFIX)
    }


def test_a_window_that_recorded_nothing_shows_no_figures(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "max_new_tokens=4", *NOTHING_RECORDED)
    assert_ok(proc)
    assert "nothing was recorded" in proc.stderr, describe(proc)
    line = _profile_line(proc.stdout)
    assert line.startswith("profile: 0 steps in - ms, 0 decode steps, cpu ops/decode step -,"), line
    assert not re.search(r"\b0\.0+\b", line), line

    profile = read_results(tmp_path / "run")["profile"]
    for key in WINDOW_FIGURES + PER_DECODE_STEP:
        assert profile["summary"][key] is None, profile
        assert key not in profile["metrics"], profile
    # Counts of what was recorded stay: zero steps were recorded.
    assert profile["metrics"] == {"steps": 0.0, "decode_steps": 0.0}, profile
    assert _profile_rows(RunResults.read(tmp_path / "run")) == {"steps": 0.0, "decode_steps": 0.0}


def test_a_window_with_no_decode_step_has_no_per_decode_step_figures(tmp_path: Path) -> None:
    # active=1: the window is the first step, the prefill of every request.
    proc = run_cli(
        tmp_path, *FAST, "num_requests=2", "max_new_tokens=4", "profile.enabled=true", "profile.active=1",
        "hydra.run.dir=run",
    )  # fmt: skip
    assert_ok(proc)
    line = _profile_line(proc.stdout)
    assert ", 0 decode steps, cpu ops/decode step -," in line, line
    assert re.match(r"profile: 1 steps in \d+\.\d{3} ms", line), line

    profile = read_results(tmp_path / "run")["profile"]
    assert profile["summary"]["window_ms"] > 0 and profile["summary"]["cpu_ops_per_decode_step"] is None
    assert "cpu_ops_per_decode_step" not in profile["metrics"], profile
    assert profile["metrics"]["label_engine_prefill_ms"] > 0
    assert 0 < profile["metrics"]["label_engine_prefill_share"] <= 1
    rows = _profile_rows(RunResults.read(tmp_path / "run"))
    assert "cpu_ops_per_decode_step" not in rows and rows["window_ms"] > 0


def test_results_written_with_zero_figures_read_and_upload_without_them(tmp_path: Path) -> None:
    """results.json from before the fix held 0.0 for what a window that recorded nothing never measured;
    such a folder still reads, and uploading it to MLflow logs no 0 for those figures."""
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "max_new_tokens=4", *NOTHING_RECORDED)
    assert_ok(proc)
    path = tmp_path / "run" / "results.json"
    data = json.loads(path.read_text())
    data["profile"]["summary"] |= {"window_ms": 0.0, "cpu_ops_per_decode_step": 0.0}  # as written before
    data["profile"]["metrics"] = {"window_ms": 0.0, "steps": 0.0, "decode_steps": 0.0}
    data["profile"]["metrics"]["cpu_ops_per_decode_step"] = 0.0
    path.write_text(json.dumps(data, indent=2) + "\n")

    summary = RunResults.read(tmp_path / "run").profile.summary
    assert summary.window_ms is None and summary.cpu_ops_per_decode_step is None
    assert summary.metrics() == {"steps": 0.0, "decode_steps": 0.0}

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    upload = run_tool(tmp_path, "upload", str(tmp_path / "run"), "--uri", uri)
    assert upload.returncode == 0, describe(upload)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rosebench").experiment_id])
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "figures.json")).read_text())
    profile_rows = {row[0]: row[1] for row in table["data"] if row[0].startswith(PROFILE_PREFIX)}
    assert profile_rows == {"profile/steps": 0.0, "profile/decode_steps": 0.0}


KINETO_NOISE = ("gpuGetDeviceCount", "USDT", "SyncActivityProfilerHandler", "DeviceProperties.cpp")


def test_a_profiled_cpu_run_prints_only_rosebench_lines_on_stderr(tmp_path: Path) -> None:
    # Two cycles with a warm-up step each: the trace starts and stops twice, and is exported twice.
    proc = run_cli(
        tmp_path, *FAST, "num_requests=2", "max_new_tokens=10", "profile.enabled=true", "profile.wait=1",
        "profile.warmup=1", "profile.active=2", "profile.repeat=2", "hydra.run.dir=run",
    )  # fmt: skip
    assert_ok(proc)
    for noise in KINETO_NOISE:
        assert noise not in proc.stderr, describe(proc)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")], describe(proc)
    assert [line for line in proc.stderr.splitlines() if not line.startswith("rosebench")] == [], proc.stderr
    # The profile is still whole: two cycles, each with its own trace.
    profile = read_results(tmp_path / "run")["profile"]
    assert profile["traces"] == ["profile/trace_0.json.gz", "profile/trace_1.json.gz"]
    assert profile["summary"]["steps"] == 4 and profile["summary"]["decode_steps"] == 4
