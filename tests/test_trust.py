"""Input a user can get wrong, refused in one line before any timing; names and files that say what ran.

Each test runs the real ``python -m rosebench`` in a subprocess, as a user types it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import FAST, act_at_line, assert_ok, describe, read_results, run_cli, start_cli
from mlflow import MlflowClient

_ONE_LINE = "rosebench: error: "


def _one_error_line(proc) -> str:
    """The run's only stderr line, which must be rosebench's error (no traceback, no other noise)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, describe(proc)
    assert lines[0].startswith(_ONE_LINE), describe(proc)
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["+nonsense_key=3"], ["nonsense_key: no such key in the config", "num_requests"]),
        (["workload=fixed", "+workload.input_len=5"], ["workload.input_len", "workload=fixed", "prompt"]),
        (["+engine.kv_cache.blocks=9"], ["engine.kv_cache.blocks", "block_size"]),
        (["~num_requests"], ["~num_requests: deleting a key or group is not supported"]),
        (["~engine"], ["~engine: deleting"]),  # Hydra would run the schema's gpt2 without a word
        (
            ["engine=tinyy"],
            ["engine=tinyy: no such option (allowed: gpt2, gpt2-medium, llama-tiny, smollm2-135m, tiny)"],
        ),
        (["workload=nope"], ["workload=nope: no such option (allowed: fixed, jsonl, random, shared_prefix)"]),
        (["--multirun", "seed=0,1", "sampling=greedy,greedyy"], ["sampling=greedyy: no such option"]),
        (["sampling.max_new_tokens=0"], ["sampling.max_new_tokens=0: must be >= 1"]),
    ],
)
def test_a_key_or_option_the_config_does_not_define_is_refused(
    tmp_path: Path, overrides: list[str], words: list[str]
) -> None:
    line = _one_error_line(run_cli(tmp_path, *FAST, *overrides))
    for word in words:
        assert word in line, line
    assert not list(tmp_path.rglob("results.json")), "a refused config must not run"


def test_a_seed_past_its_limit_is_named_as_typed(tmp_path: Path) -> None:
    line = _one_error_line(run_cli(tmp_path, *FAST, "seed=4294967296"))
    assert line == f"{_ONE_LINE}seed=4294967296: must be in [0, 2**32)"


def test_max_new_tokens_has_one_source(tmp_path: Path) -> None:
    """``sampling.max_new_tokens`` alone is what ran: results.json's max_new_tokens says so; set beside a
    different ``max_new_tokens`` it is refused."""
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "sampling.max_new_tokens=3", "hydra.run.dir=run")
    assert_ok(proc)
    results = read_results(tmp_path / "run")
    assert results["config"]["max_new_tokens"] == 3 == results["config"]["sampling"]["max_new_tokens"]
    assert results["metrics"]["completion_tokens"] == 2 * 3
    line = _one_error_line(run_cli(tmp_path, *FAST, "max_new_tokens=8", "sampling.max_new_tokens=3"))
    assert "max_new_tokens=8 and sampling.max_new_tokens=3 disagree" in line


def test_a_key_given_twice_is_named_by_the_value_that_ran(tmp_path: Path) -> None:
    """Hydra applies the last of two overrides of one key: run and sweep names show that one only."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = [*FAST[:1], "warmup=0", "repeat=1", "max_new_tokens=2", f"tracking.uri={uri}"]
    single = run_cli(tmp_path, *tiny, "num_requests=4", "++num_requests=2", "hydra.run.dir=run")
    assert_ok(single)
    results = read_results(tmp_path / "run")
    assert results["metrics"]["requests"] == 2
    assert results["run"]["name"].endswith("-num_requests=2"), results["run"]["name"]
    assert "num_requests=4" not in results["run"]["name"]
    sweep = run_cli(tmp_path, "--multirun", *tiny, "num_requests=4", "num_requests=1,2", "hydra.sweep.dir=s")
    assert_ok(sweep)
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "rosebench"]
    [parent] = [
        r for r in client.search_runs([experiment.experiment_id]) if "rosebench_sweep_parent" in r.data.tags
    ]
    assert parent.info.run_name.startswith("sweep num_requests=1,2 (")
    assert "num_requests=4" not in parent.info.run_name, parent.info.run_name


def test_a_sweep_with_bad_points_says_one_line_each_and_runs_the_others(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        "--multirun",
        *FAST,
        "max_new_tokens=2",
        "num_requests=0,2",
        "seed=0,4294967296",
        "hydra.sweep.dir=sweep",
    )
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, describe(proc)
    errors = sorted(line for line in proc.stderr.splitlines() if line.startswith(_ONE_LINE))
    assert errors == [
        f"{_ONE_LINE}num_requests=0: must be >= 1",
        f"{_ONE_LINE}num_requests=0: must be >= 1",
        f"{_ONE_LINE}seed=4294967296: must be in [0, 2**32)",
    ], describe(proc)
    assert proc.stderr.rstrip().endswith("rosebench: 3 sweep points were refused (above); the others ran")
    [good] = list((tmp_path / "sweep").glob("*/results.json"))
    assert read_results(good.parent)["metrics"]["requests"] == 2


def test_hydra_job_chdir_keeps_paths_and_the_store_in_the_launch_folder(tmp_path: Path) -> None:
    """With ``hydra.job.chdir=true`` a relative ``workload.path`` is read, and the default store is made,
    in the folder the user launched from, as the README says, not in the run folder."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hello there"}\n')
    proc = run_cli(
        tmp_path,
        *FAST[:1],
        "warmup=0",
        "repeat=1",
        "max_new_tokens=2",
        "num_requests=1",
        "workload=jsonl",
        "workload.path=prompts.jsonl",
        "hydra.job.chdir=true",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "run" / "mlflow.db").exists()
    assert read_results(tmp_path / "run")["metrics"]["requests"] == 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert config["workload"]["path"] == "prompts.jsonl"


def test_rosebench_warnings_are_one_line_each(tmp_path: Path) -> None:
    """A warning a run raises (here: a profile schedule longer than the pass) reads as one rosebench line,
    not as a source path followed by a line of code."""
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "profile.enabled=true", "profile.skip_first=1000")
    assert_ok(proc)
    [line] = [line for line in proc.stderr.splitlines() if "skip_first+wait+warmup+active" in line]
    assert line.startswith("rosebench: warning: profiled pass ran "), line
    assert ".py:" not in proc.stderr, describe(proc)


def test_a_run_folder_made_immutable_mid_run_loses_nothing_that_mlflow_can_hold(tmp_path: Path) -> None:
    """``chattr +i`` on the run folder after the first timed pass: no new file can be made in it. The line
    says which files are missing and that their content is in the MLflow run, which holds them whole."""
    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_cli(
        tmp_path,
        *FAST[:1],
        "warmup=0",
        "repeat=2",
        "num_requests=3",
        f"tracking.uri={uri}",
        f"hydra.run.dir={run_dir}",
    )
    frozen = []

    def freeze() -> None:
        frozen.append(subprocess.run(["chattr", "+i", str(run_dir)], capture_output=True, text=True))

    try:
        stdout, stderr = act_at_line(proc, "rosebench: pass 1/2:", freeze)
    finally:
        subprocess.run(["chattr", "-i", str(run_dir)], capture_output=True)
    if frozen[0].returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {frozen[0].stderr.strip()}")
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    client = MlflowClient(uri)
    [run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments() if e.name == "rosebench"]
    )
    [message] = [line for line in stderr.splitlines() if line.startswith(_ONE_LINE)]
    refused = "(Operation not permitted)"
    assert message == (
        f"{_ONE_LINE}could not write {run_dir / 'results.json'} {refused}; {run_dir / 'outputs.jsonl'} "
        f"{refused}; {run_dir / 'tracking.json'} {refused}; results.json and outputs.jsonl are artifacts of "
        f"MLflow run {run.info.run_id}; tracking.json would name that run, printed below"
    ), message
    assert not (run_dir / "results.json").exists()
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))).read_text()
    )
    assert logged["run"]["status"] == "FINISHED" and len(logged["passes"]) == 2
    outputs = Path(client.download_artifacts(run.info.run_id, "outputs.jsonl", str(tmp_path))).read_text()
    assert len(outputs.splitlines()) == 3
    assert "completion throughput (tok/s)" in stdout
