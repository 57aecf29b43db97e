"""Run the real ``python -m rosebench`` CLI in a subprocess and read what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# The cheapest shape of a run: a 2-layer model, no MLflow, one timed pass and no warm-up.
FAST = ("engine=tiny", "tracking=off", "warmup=0", "repeat=1")


def cli_env(pythonpath: bool = True) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, nothing that changes errors."""
    env = os.environ.copy()
    for key in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "PYTHONPATH"):
        env.pop(key, None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def run_cli(
    cwd: Path, *args: str, python: str = sys.executable, timeout: float = 600, pythonpath: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "rosebench", *args],
        cwd=cwd,
        env=cli_env(pythonpath),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_tool(cwd: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m rosebench.TOOL ARGS`` (upload, report, compare) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", f"rosebench.{tool}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_cli(cwd: Path, *args: str, stdout: int = subprocess.PIPE, **popen: Any) -> subprocess.Popen[str]:
    """``python -m rosebench ARGS`` started in the background (to signal it, or to start several at once);
    stderr is a pipe to read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "rosebench", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def act_at_line(
    proc: subprocess.Popen[str], prefix: str, act: Callable[[], object], timeout: float = 300
) -> tuple[str, str]:
    """Read a started CLI's stderr until a line starts with ``prefix``, run ``act`` (fill the disk, freeze
    the folder), then wait for the process; returns its stdout and its whole stderr."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            act()
            break
    stdout, rest = proc.communicate(timeout=timeout)
    return stdout, "".join(seen) + rest


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit code {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}"
        f"\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def logged_figures(metrics: Mapping[str, float]) -> set[str]:
    """A run's MLflow metric names but MLflow's system metrics, which it samples every second while the run
    is RUNNING: a run shorter than that has none, a longer one some."""
    return {name for name in metrics if not name.startswith("system/")}


def read_outputs(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "outputs.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def compare_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused comparison prints (exit code 2, nothing on stdout, no traceback)."""
    assert proc.returncode == 2, describe(proc)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, describe(proc)
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("rosebench.compare: error: "), describe(proc)
    return line


def finished_pass(line: str, label: str) -> bool:
    """Whether a stderr line says that the timed pass ``label`` (``pass 2/1000``) finished: ``rosebench: pass
    2/1000: 812.3 tok/s``, not one of the progress lines a slow pass prints every 10 s (``rosebench: pass
    2/1000: 3/8 requests done, ...``)."""
    return line.startswith(f"rosebench: {label}: ") and line.rstrip().endswith(" tok/s")
