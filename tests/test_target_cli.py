"""``python -m rosebench target=serve|http`` end to end: the real CLI in a subprocess against real servers
(GuideLLM's mock-server, rosebench.serve), a real SQLite MLflow store in the test's folder.

What must hold: a run over HTTP is one MLflow run whose metric names are an engine run's, less the engine's
own figures HTTP cannot see; rosebench's own server gives the engine's greedy tokens exactly; every bad
input is one line and exit 1 before timing; no server outlives its run, Ctrl-C included.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from cli_helpers import (
    FAST,
    act_at_line,
    assert_ok,
    describe,
    logged_figures,
    read_outputs,
    read_results,
    run_cli,
    start_cli,
)
from guidellm_mock import MockServer, free_port, mock_server
from mlflow import MlflowClient
from serve_helpers import start_server

pytestmark = pytest.mark.slow

MOCK_MODEL = "llama-3.1-8b-instruct"  # the id GuideLLM's mock-server lists
SECRET = "sk-not-for-any-file-4242"
# What only an engine in this process (or its server's counters) can tell; absent over HTTP, never 0.
ENGINE_ONLY = {
    "elapsed_prefill_s",
    "elapsed_decode_s",
    "decode_step_ms_p50",
    "decode_step_ms_mean",
    "mean_batch_size",
    "peak_kv_blocks",
}
SERVER_COUNTERS = {"kv_capacity_blocks", "prefix_cache_hit_rate", "preemptions"}  # target=serve reads these
SHAPE = ("num_requests=3", "max_new_tokens=8", "warmup=0", "repeat=1")


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    folder = tmp_path_factory.mktemp("mock")
    with mock_server(folder, "--ttft-ms", "50", "--itl-ms", "5", "--output-tokens", "1000") as server:
        yield server


def mlflow_runs(db: Path) -> dict[str, object]:
    """{run dir name: run} of the store's rosebench experiment."""
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("rosebench")
    return {Path(r.data.tags["run_dir"]).name: r for r in client.search_runs([experiment.experiment_id])}


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run's one error line: exit 1, no traceback, and the last line of stderr."""
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("rosebench: error: ")] == lines[-1:], describe(proc)
    return lines[-1]


def test_http_target_is_one_mlflow_run_with_an_engine_runs_metric_names(
    tmp_path: Path, mock: MockServer
) -> None:
    db = tmp_path / "mlflow.db"
    shape = ("num_requests=4", "max_new_tokens=6", "warmup=1", "repeat=2", f"tracking.uri=sqlite:///{db}")
    assert_ok(run_cli(tmp_path, "engine=tiny", *shape, "hydra.run.dir=engine"))
    http = run_cli(
        tmp_path,
        "target=http",
        f"target.url={mock.url}/v1",
        f"target.api_key={SECRET}",
        "mode=online",
        "scheduler.request_rate=20",
        "profile.enabled=true",
        *shape,
        "hydra.run.dir=http",
    )
    assert_ok(http)
    assert "prompts sent as text (the server refused token ids: HTTP 400)" in http.stderr
    assert (
        "the server has no profiler endpoints (/start_profile answers 404): no profiled pass" in http.stderr
    )

    engine, remote = read_results(tmp_path / "engine"), read_results(tmp_path / "http")
    # This machine's memory and threads say nothing of a remote server: absent, not the client's own.
    client_side = {"peak_rss_mb", "torch_threads"}
    assert set(remote["metrics"]) == set(engine["metrics"]) - ENGINE_ONLY - SERVER_COUNTERS - client_side
    assert "oversubscribed" not in http.stderr
    assert remote["metrics"]["failed_requests"] == engine["metrics"]["failed_requests"] == 0
    assert remote["metrics"]["completion_tokens"] == 4 * 6  # the server's usage
    assert remote["target"] == {
        "kind": "http",
        "url": mock.url,
        "model": MOCK_MODEL,
        "endpoint": "completions",
        "prompt": "text",
        "completion_tokens_source": {"usage": 8},  # two timed passes of 4
        "output_token_ids_source": {"tokenizer": 8},
        "prefix_cache_reset_between_passes": False,
    }
    assert remote["model"]["short"] == MOCK_MODEL and remote["environment"]["device"] == "remote"
    assert "engine" not in remote["config"] and remote["config"]["target"]["api_key"] == "***"
    assert "max_batch_size" not in remote["config"]["scheduler"]  # the server's own limit, not this config's
    assert remote["profile"] is None and not (tmp_path / "http" / "errors.jsonl").exists()
    rows = read_outputs(tmp_path / "http")
    assert [r["request_id"] for r in rows] == [0, 1, 2, 3]
    assert all(r["completion_tokens"] == 6 and r["error"] is None and r["text"] for r in rows)
    assert all(r["ttft_ms"] >= 50 for r in rows)

    runs = mlflow_runs(db)
    assert runs.keys() == {"engine", "http"}
    # MLflow's metrics are the headline figures: the same names, but the server's memory, which is not
    # visible over HTTP (the client's own would mislead).
    assert logged_figures(runs["http"].data.metrics) == logged_figures(runs["engine"].data.metrics) - {
        "peak_rss_mb"
    }
    assert runs["http"].data.params["target.kind"] == "http"
    assert runs["http"].data.params["target.api_key"] == "***"
    logged = json.dumps([runs["http"].data.params, runs["http"].data.tags, runs["http"].info.run_name])
    assert SECRET not in logged and SECRET not in http.stdout + http.stderr
    for path in [*(tmp_path / "http").rglob("*"), *(tmp_path / "mlruns").rglob("*")]:
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def failing_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    # The 1-token probe before timing is its first request; every later one is an HTTP 500.
    folder = tmp_path_factory.mktemp("failing")
    with mock_server(folder, "--ttft-ms", "1", "--itl-ms", "1", "--fail-after-requests", "1") as server:
        yield server


@pytest.fixture(scope="module")
def not_an_llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A web server that answers, but not the OpenAI API: /v1/models is a 404."""
    port = free_port()
    folder = tmp_path_factory.mktemp("static")
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            assert process.poll() is None and time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize(
    "case",
    ["missing url", "bad endpoint", "bad url", "unreachable", "no /v1/models", "every request fails"],
)
def test_bad_target_input_is_one_line_before_timing(
    tmp_path: Path, case: str, request: pytest.FixtureRequest
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    overrides, expected = {
        "missing url": ([], "rosebench: error: target.url: required with target=http"),
        "bad endpoint": (
            [f"target.url={closed}", "target.endpoint=foo"],
            "rosebench: error: target.endpoint=foo: allowed values are completions, chat",
        ),
        "bad url": (["target.url=ftp://example.org"], "target.url=ftp://example.org: not an http(s) URL"),
        "unreachable": ([f"target.url={closed}"], f"GET {closed}/v1/models: cannot reach the server"),
        "no /v1/models": (None, "/v1/models answered HTTP 404"),
        "every request fails": (None, "every request of pass 1/1 failed"),
    }[case]
    if case == "no /v1/models":
        overrides = [f"target.url={request.getfixturevalue('not_an_llm_server')}"]
    if case == "every request fails":
        overrides = [f"target.url={request.getfixturevalue('failing_mock').url}", "target.prompt=text"]
    proc = run_cli(tmp_path, "target=http", *overrides, *FAST, *SHAPE, "hydra.run.dir=run")
    line = error_line(proc)
    assert expected in line, describe(proc)
    if case in ("missing url", "bad endpoint", "bad url", "unreachable", "no /v1/models"):
        assert proc.stderr.strip() == line  # nothing else was said, nothing was timed
        assert not (tmp_path / "run" / "results.json").exists()
    if case == "every request fails":
        assert "HTTP 500" in line
        errors = [json.loads(row) for row in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
        assert len(errors) == 3 and {e["status"] for e in errors} == {500}
        assert all("fail_after_requests" in e["body"] and e["pass"] == "pass 1/1" for e in errors)
        assert read_results(tmp_path / "run")["run"]["status"] == "FAILED"


# --------------------------------------------------------------------------- rosebench's own server


def server_pid(run_dir: Path) -> int:
    return json.loads((run_dir / "server" / "server.json").read_text())["pid"]


def test_serve_target_gives_the_engines_tokens_in_one_mlflow_run(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    shape = ("engine=tiny", "workload=random", *SHAPE, f"tracking.uri=sqlite:///{db}")
    assert_ok(run_cli(tmp_path, *shape, "hydra.run.dir=engine"))
    serve = run_cli(tmp_path, "target=serve", "profile.enabled=true", *shape, "hydra.run.dir=serve")
    assert_ok(serve)
    assert "prompts sent as token ids" in serve.stderr

    run_dir = tmp_path / "serve"
    engine, served = read_results(tmp_path / "engine"), read_results(run_dir)
    assert [r["output_token_ids"] for r in read_outputs(run_dir)] == [
        r["output_token_ids"] for r in read_outputs(tmp_path / "engine")
    ]
    # The engine config the server was started with: max_model_len resolved from the workload as in-process
    # (the block budget and cuda_graphs the engine resolves as it is built are the server's to say).
    built_by_engine = ("cuda_graphs", "kv_cache")
    assert {k: v for k, v in served["config"]["engine"].items() if k not in built_by_engine} == {
        k: v for k, v in engine["config"]["engine"].items() if k not in built_by_engine
    }
    assert served["target"]["kind"] == "serve" and served["target"]["prompt"] == "token_ids"
    assert served["target"]["output_token_ids_source"] == {"server": 3}
    assert served["model"] == engine["model"]
    assert set(served["metrics"]) == set(engine["metrics"]) - ENGINE_ONLY
    assert served["metrics"]["completion_tokens"] == engine["metrics"]["completion_tokens"]
    # The profiled pass ran on the server; its files were copied into the run folder and summarized.
    assert served["profile"] is not None and served["profile"]["steps"] > 0
    assert (run_dir / "profile" / "summary.json").is_file() and served["profile"]["traces"]
    assert "rosebench.serve" in (run_dir / "server.log").read_text()
    assert not psutil.pid_exists(server_pid(run_dir))

    runs = mlflow_runs(db)
    assert runs.keys() == {"engine", "serve"}
    # The same figures, and the served run's trace headline: it was the profiled one.
    served_metrics = logged_figures(runs["serve"].data.metrics)
    engine_metrics = logged_figures(runs["engine"].data.metrics)
    assert {m for m in served_metrics if not m.startswith("profile/")} == engine_metrics
    assert "profile/cpu_ops_per_decode_step" in served_metrics
    client = MlflowClient(f"sqlite:///{db}")
    artifacts = {a.path for a in client.list_artifacts(runs["serve"].info.run_id)}
    assert {"results.json", "outputs.jsonl", "server.log", "profile"} <= artifacts


def test_ctrl_c_mid_pass_keeps_finished_passes_and_leaves_no_server(tmp_path: Path) -> None:
    proc = start_cli(
        tmp_path,
        "target=serve",
        *FAST,
        "repeat=3",
        "mode=online",
        "scheduler.request_rate=4",
        "num_requests=12",
        "max_new_tokens=8",
        "hydra.run.dir=run",
    )
    pid: list[int] = []

    def interrupt() -> None:
        pid.append(server_pid(tmp_path / "run"))
        assert psutil.pid_exists(pid[0])
        proc.send_signal(signal.SIGINT)

    _, stderr = act_at_line(proc, "rosebench: pass 1/3:", interrupt)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    results = read_results(tmp_path / "run")
    assert results["run"]["status"] == "KILLED" and len(results["passes"]) == 1
    assert results["run"]["interrupted_during"] in ("pass 2/3", "the gap between passes")
    assert pid and not psutil.pid_exists(pid[0])


def test_a_runner_killed_by_sigkill_leaves_no_server(tmp_path: Path) -> None:
    """SIGKILL gives the runner no chance to stop its server: the server ends itself when its parent dies."""
    proc = start_cli(tmp_path, "target=serve", *FAST, "repeat=3", "mode=online", "scheduler.request_rate=4",
                     "num_requests=12", "max_new_tokens=8", "hydra.run.dir=run")  # fmt: skip
    pid: list[int] = []

    def kill() -> None:
        pid.append(server_pid(tmp_path / "run"))
        proc.send_signal(signal.SIGKILL)

    act_at_line(proc, "rosebench: pass 1/3:", kill)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid[0]) and psutil.Process(pid[0]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the server outlived its killed runner"
        time.sleep(0.1)


def test_http_target_against_rosebench_serve_started_apart(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", "engine=tiny")
    try:
        assert_ok(run_cli(tmp_path, "engine=tiny", *FAST, *SHAPE, "hydra.run.dir=engine"))
        http = run_cli(
            tmp_path, "target=http", f"target.url={server.url}", "profile.enabled=true", *FAST, *SHAPE,
            "hydra.run.dir=http",
        )  # fmt: skip
        assert_ok(http)
    finally:
        server.stop()
    assert "prompts sent as token ids" in http.stderr
    remote = read_results(tmp_path / "http")
    assert remote["target"]["model"] == "tiny" and remote["target"]["output_token_ids_source"] == {
        "server": 3
    }
    assert [r["output_token_ids"] for r in read_outputs(tmp_path / "http")] == [
        r["output_token_ids"] for r in read_outputs(tmp_path / "engine")
    ]
    assert remote["profile"] is not None and (tmp_path / "http" / "profile" / "summary.json").is_file()
