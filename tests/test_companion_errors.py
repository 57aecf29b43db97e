"""Bad input to the companion CLIs (``rosebench.compare``, ``rosebench.report``), through the real CLI: output
paths that cannot be written are refused before any work, and a tracking URI's password never reaches the
console. One real run folder; a real port with nothing listening for "server down"."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from cli_helpers import FAST, assert_ok, describe, run_cli, run_tool

PASSWORD = "Hunter2-not-for-logs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("companion")
    assert_ok(run_cli(root, *FAST, "repeat=2", "num_requests=2", "max_new_tokens=2", "hydra.run.dir=run"))
    return root / "run"


def one_error(proc: subprocess.CompletedProcess[str], tool: str) -> str:
    """The single line a refused command prints: non-zero exit, nothing on stdout, no traceback."""
    assert proc.returncode != 0, describe(proc)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, describe(proc)
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"rosebench.{tool}: error: "), describe(proc)
    return line


def closed_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_compare_checks_its_output_paths_before_comparing(run_dir: Path) -> None:
    root = run_dir.parent
    cases = {
        ("--markdown", "/nonexistent/dir/x.md"): "folder /nonexistent/dir does not exist",
        ("--json", str(run_dir)): "is a directory",
        ("--json", f"{run_dir / 'results.json'}/c.json"): f"{run_dir / 'results.json'} is not a directory",
    }
    for (option, path), why in cases.items():
        proc = run_tool(root, "compare", "run", "run", option, path)
        line = one_error(proc, "compare")
        assert proc.returncode == 2 and line.startswith(f"rosebench.compare: error: {option} {path}: "), line
        assert why in line, line
    assert not list(root.glob(".*.tmp")) and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_report_checks_plots_and_out_before_reading(run_dir: Path) -> None:
    root = run_dir.parent
    results = run_dir / "results.json"
    line = one_error(run_tool(root, "report", "--sweep", "run", "--plots", str(results)), "report")
    assert line.startswith(f"rosebench.report: error: --plots {results}: "), line
    assert "is a file" in line and "must be a directory" in line, line
    line = one_error(run_tool(root, "report", "--sweep", "run", "--plots", f"{results}/plots"), "report")
    assert f"--plots {results}/plots: {results} is a file" in line, line
    proc = run_tool(root, "report", "--sweep", "run", "--out", "/nonexistent/dir/sweep.csv")
    line = one_error(proc, "report")
    assert line == (
        "rosebench.report: error: --out /nonexistent/dir/sweep.csv: folder /nonexistent/dir does not exist"
    )
    line = one_error(run_tool(root, "report", "--sweep", "run", "--out", str(run_dir)), "report")
    assert line.startswith(f"rosebench.report: error: --out {run_dir}: is a directory"), line
    written = run_tool(root, "report", "--sweep", "run", "--out", "table.txt", "--plots", "plots")
    assert_ok(written)
    assert "run" in (root / "table.txt").read_text()


@pytest.mark.slow
def test_a_password_in_the_uri_never_reaches_the_console(run_dir: Path) -> None:
    """Run ids against a server that is down, a report from it, and --log to it: each says what failed
    without the password, which appears nowhere in what the commands print."""
    root = run_dir.parent
    uri = f"http://rosie:{PASSWORD}@127.0.0.1:{closed_port()}"
    ids = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
    procs = {
        "compare": run_tool(root, "compare", *ids, "--uri", uri),
        "report": run_tool(root, "report", "--experiment", "x", "--uri", uri),
    }
    for tool, proc in procs.items():
        assert PASSWORD not in proc.stdout + proc.stderr, describe(proc)
        line = one_error(proc, tool)
        assert "rosie:***@127.0.0.1" in line, line
    logged = run_tool(root, "compare", "run", "run", "--log", "--uri", uri)
    assert logged.returncode == 0 and "Traceback" not in logged.stderr, describe(logged)
    assert PASSWORD not in logged.stdout + logged.stderr, describe(logged)
    [line] = logged.stderr.strip().splitlines()
    assert line.startswith("rosebench.compare: not logged to MLflow"), line
