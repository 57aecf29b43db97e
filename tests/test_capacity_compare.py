"""``rosebench.compare`` of two capacity searches: the ratio, its interval from the two brackets, the
verdict and ``--fail-if-worse``; first on hand-made reports, then through the real CLI on capacity.json
files written by ``CapacityReport.save`` (and one real search).

The expected intervals are worked out by hand from the brackets here, not read back from the code: a
bracket [lo, hi) says the true capacity is at least lo and below hi, so the ratio of two lies between
candidate lo / baseline hi and candidate hi / baseline lo.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_ok, compare_error_line, describe, run_cli, run_tool

from rosebench.capacity import CapacityReport, CapacitySettings, Probe
from rosebench.capacity_comparison import CapacitySide, compare_capacity, to_json, worse_than
from rosebench.comparison import ComparisonError
from rosebench.results import RunInfo, RunResults

SLO = {"ttft_ms": 50.0, "tpot_ms": None, "e2e_ms": None}
PASSED, FAILED = (0.93, 1.0), (0.0, 0.24)  # Wilson intervals of 48/48 and 0/12 met at 95%


def report(
    capacity: float | None,
    upper: float | None,
    *,
    knob: str = "scheduler.request_rate",
    target: float = 0.9,
    slo: dict[str, float | None] | None = None,
    upper_verdict: str = "fail",
    **settings: float,
) -> CapacityReport:
    """A search that ended with this bracket: one passing probe at ``capacity``, one not passing at
    ``upper`` (either may be None: nothing held, or everything did)."""
    probes = []
    if capacity is not None:
        probes.append(Probe(capacity, 1, 48, 48, PASSED, "pass", ["p"]))
    if upper is not None:
        trials = 3 if upper_verdict == "unsure" else 1
        probes.append(Probe(upper, trials, 0, 12 * trials, FAILED, upper_verdict, ["u"] * trials))
    start = capacity or upper or 8
    return CapacityReport(
        knob=knob,
        target=target,
        slo=dict(SLO if slo is None else slo),
        settings=asdict(CapacitySettings(knob=knob, start=start, **settings)),
        probes=probes,
        capacity=capacity,
        capacity_upper=upper,
        stop_reason="the budget of 12 runs is spent",
    )


def side(capacity: float | None, upper: float | None, label: str = "side", **kwargs: Any) -> CapacitySide:
    return CapacitySide(label, report(capacity, upper, **kwargs))


# -- the ratio and the verdict ----------------------------------------------------------------------------
def test_a_candidate_that_held_a_load_the_baseline_did_not_is_better_and_the_reverse_worse():
    """[8, 16) against [16, 32): the candidate held 16, where the baseline failed. The ratio lies in
    [16/16, 32/8] = [1, 4], its point estimate sqrt(16*32) / sqrt(8*16) = 2; reversed, [0.25, 1] and 0.5."""
    c = compare_capacity(side(8, 16, "base"), side(16, 32, "cand"))
    assert (c.verdict, c.ratio_low, c.ratio_high, c.ratio) == ("better", 1.0, 4.0, pytest.approx(2.0))
    assert c.reason == "the candidate held scheduler.request_rate=16, the baseline did not hold 16"
    r = compare_capacity(side(16, 32, "cand"), side(8, 16, "base"))
    assert (r.verdict, r.ratio_low, r.ratio_high, r.ratio) == ("worse", 0.25, 1.0, pytest.approx(0.5))
    assert r.reason == "the candidate did not hold scheduler.request_rate=16, the baseline held 16"
    assert not c.notes and not c.warnings


def test_overlapping_brackets_cannot_tell():
    """[8, 16) against [12, 24): each holds what the other might; the ratio lies in [0.75, 3]."""
    c = compare_capacity(side(8, 16), side(12, 24))
    assert (c.verdict, c.reason) == ("cannot tell", "the brackets overlap")
    assert (c.ratio_low, c.ratio_high, c.ratio) == (0.75, 3.0, pytest.approx(1.5))
    same = compare_capacity(side(8, 16), side(8, 16))  # a search against itself
    assert (same.verdict, same.ratio_low, same.ratio_high, same.ratio) == ("cannot tell", 0.5, 2.0, 1.0)


@pytest.mark.parametrize(
    ("baseline", "candidate", "low", "high", "verdict", "note"),
    [
        # The baseline held everything it probed (up to 32): no lower bound on the ratio.
        ((32, None), (64, 128), 0.0, 4.0, "cannot tell", "the baseline held every"),
        ((32, None), (8, 16), 0.0, 0.5, "worse", "the ratio's low end is 0"),
        # The baseline held nothing (down to 8): no upper bound.
        ((None, 8), (8, 16), 1.0, math.inf, "better", "the baseline held no"),
        ((None, 8), (None, 4), 0.0, math.inf, "cannot tell", "the ratio's high end is unbounded"),
        # The candidate held everything: no upper bound; held nothing: no lower bound.
        ((8, 16), (64, None), 4.0, math.inf, "better", "the candidate held every"),
        ((8, 16), (None, 4), 0.0, 0.5, "worse", "the candidate held no"),
    ],
)
def test_an_open_bracket_makes_its_end_of_the_interval_0_or_unbounded_and_says_so(
    baseline: tuple, candidate: tuple, low: float, high: float, verdict: str, note: str
) -> None:
    c = compare_capacity(side(*baseline), side(*candidate))
    assert (c.ratio_low, c.ratio_high, c.verdict) == (low, high, verdict)
    assert c.ratio is None  # no midpoint of an open bracket
    assert any(note in n for n in c.notes), c.notes
    data = json.loads(to_json(c), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert data["capacity"]["ratio_high"] == (None if math.isinf(high) else high)


@pytest.mark.parametrize(
    ("candidate", "named"),
    [
        (
            {"knob": "scheduler.max_concurrency"},
            "knob (scheduler.request_rate vs scheduler.max_concurrency)",
        ),
        ({"slo": {**SLO, "ttft_ms": 100.0}}, "slo.ttft_ms (50 vs 100)"),
        ({"slo": {**SLO, "tpot_ms": 20.0}}, "slo.tpot_ms (null vs 20)"),
        ({"target": 0.99}, "slo.attainment (0.9 vs 0.99)"),
    ],
    ids=["knob", "bound", "another bound", "target"],
)
def test_searches_of_another_knob_or_slo_are_refused_in_one_line(candidate: dict, named: str) -> None:
    with pytest.raises(ComparisonError) as refused:
        compare_capacity(side(8, 16), side(8, 16, **candidate))
    message = str(refused.value)
    assert message.startswith(f"the capacity searches differ in {named}: "), message
    assert "\n" not in message


def test_a_search_that_decided_no_probe_is_refused():
    empty = CapacitySide("interrupted", report(None, None))
    empty.report.stop_reason = "interrupted"
    with pytest.raises(ComparisonError, match=r"^candidate interrupted: the search decided no probe"):
        compare_capacity(side(8, 16), empty)


def test_settings_that_differ_are_noted_and_an_unsure_upper_end_is_warned_of():
    c = compare_capacity(side(8, 16), side(12, 24, upper_verdict="unsure", confidence=0.9))
    [note] = c.notes  # not start (8 vs 12): where a search begins is no part of what it found
    assert note.startswith("settings differ: hydra.sweeper.confidence = 0.95 vs 0.9"), note
    [warning] = c.warnings
    assert warning.startswith("candidate side: its upper end scheduler.request_rate=24 was unsure"), warning


# -- --fail-if-worse --------------------------------------------------------------------------------------
def test_the_gate_fails_only_when_the_whole_interval_lies_at_or_below_the_bound():
    """[0.25, 1] (candidate [8, 16) against [16, 32)) is worse by some amount: it fails a 0% gate, the
    ratio being below 1; it is not shown worse by more than 5%."""
    worse = compare_capacity(side(16, 32), side(8, 16))
    failing, line = worse_than(worse, 0)
    assert failing and line.startswith("capacity worse by more than 0%: the ratio's interval [0.250, 1.000]")
    failing, line = worse_than(worse, 5)
    assert not failing and line.startswith("capacity not shown worse by more than 5%"), line
    much_worse = compare_capacity(side(16, 32), side(4, 8))  # [0.125, 0.5]
    assert worse_than(much_worse, 50)[0] and not worse_than(much_worse, 60)[0]
    better = compare_capacity(side(8, 16), side(16, 32))
    failing, line = worse_than(better, 0)
    assert not failing and line.startswith("capacity not worse by more than 0%"), line


def test_the_gate_refuses_an_interval_no_candidate_could_fail():
    """The candidate held everything it probed, short of the baseline's failing load: [0.25, unbounded]
    would pass whatever the candidate's true capacity, so the gate gives no verdict instead."""
    c = compare_capacity(side(16, 32), side(8, None))
    with pytest.raises(ComparisonError, match=r"has no upper bound, because the candidate held every"):
        worse_than(c, 5)
    with pytest.raises(ComparisonError, match=r"because the baseline held no"):
        worse_than(compare_capacity(side(None, 8), side(None, 4)), 5)
    # Unbounded above but clear of the bound below: shown not worse, and passed.
    assert worse_than(compare_capacity(side(8, 16), side(64, None)), 5)[0] is False


# -- the CLI ----------------------------------------------------------------------------------------------
def compare(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(cwd, "compare", *args)


def save(folder: Path, capacity: float | None, upper: float | None, **kwargs) -> Path:
    folder.mkdir(parents=True)
    report(capacity, upper, **kwargs).save(folder)
    return folder


@pytest.fixture
def searches(tmp_path: Path) -> Path:
    """Capacity sweep folders (their capacity.json alone): slow [8, 16), fast [16, 32), mid [12, 24),
    one of another SLO; and a plain run folder and a plain sweep folder."""
    save(tmp_path / "slow", 8, 16)
    save(tmp_path / "fast", 16, 32)
    save(tmp_path / "mid", 12, 24)
    save(tmp_path / "strict", 8, 16, slo={**SLO, "ttft_ms": 20.0})
    for folder, overrides in (("run", []), ("sweep/a", ["num_requests=2"]), ("sweep/b", ["num_requests=4"])):
        results = RunResults(
            config={}, environment={}, run=RunInfo("plain", status="FINISHED", overrides=overrides)
        )
        results.passes = [{"throughput_completion_tok_s": 100.0}]
        results.metrics = {"throughput_completion_tok_s": 100.0}
        (tmp_path / folder).mkdir(parents=True)
        results.write(tmp_path / folder)
    return tmp_path


def test_cli_prints_the_brackets_and_the_verdict_line(searches: Path) -> None:
    proc = compare(searches, "slow", "fast")
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["baseline slow", "candidate fast"]
    assert lines[3].split() == ["side", "holds", "does", "not", "hold", "probes", "runs", "stopped"]
    assert lines[4].split()[:5] == ["baseline", "8", "16", "2", "2"]
    assert lines[5].split()[:5] == ["candidate", "16", "32", "2", "2"]
    assert (
        "capacity ratio 2.000, interval [1.000, 4.000]: better (the candidate held "
        "scheduler.request_rate=16, the baseline did not hold 16)"
    ) in lines
    overlap = compare(searches, "slow", "mid/capacity.json")  # the file itself is a side too
    assert overlap.returncode == 0, describe(overlap)
    assert (
        "capacity ratio 1.500, interval [0.750, 3.000]: cannot tell (the brackets overlap)" in overlap.stdout
    )


def test_cli_fail_if_worse_exits_1_only_when_the_interval_lies_below_the_bound(searches: Path) -> None:
    worse = compare(searches, "fast", "slow", "--fail-if-worse", "0")  # [0.25, 1]
    assert worse.returncode == 1, describe(worse)
    assert "capacity ratio 0.500, interval [0.250, 1.000]: worse" in worse.stdout
    assert worse.stderr.startswith(
        "rosebench.compare: capacity worse by more than 0%: the ratio's interval [0.250, 1.000] lies at or "
        "below 1.000 (the candidate did not hold scheduler.request_rate=16, the baseline held 16)"
    ), describe(worse)
    tolerated = compare(searches, "fast", "slow", "--fail-if-worse", "5")
    assert tolerated.returncode == 0, describe(tolerated)
    assert "rosebench.compare: capacity not shown worse by more than 5%" in tolerated.stderr
    better = compare(searches, "slow", "fast", "--fail-if-worse", "5")
    assert better.returncode == 0, describe(better)
    assert "rosebench.compare: capacity not worse by more than 5%" in better.stderr


def test_cli_refuses_a_capacity_search_against_anything_else_in_one_line(searches: Path) -> None:
    line = compare_error_line(compare(searches, "slow", "run"))
    assert line == (
        "rosebench.compare: error: compare a capacity search with a capacity search: the baseline slow is "
        "a capacity search, the candidate run is a run"
    )
    line = compare_error_line(compare(searches, "sweep", "fast", "--fail-if-worse", "5"))
    assert "the baseline sweep is a sweep, the candidate fast is a capacity search" in line, line
    line = compare_error_line(compare(searches, "slow", "strict"))
    assert "the capacity searches differ in slo.ttft_ms (50 vs 20)" in line, line
    line = compare_error_line(compare(searches, "slow", "fast", "--metric", "ttft_ms_p99", "--seed", "1"))
    assert line.startswith("rosebench.compare: error: --metric, --seed: not applicable to capacity searches")
    (searches / "broken").mkdir()
    (searches / "broken" / "capacity.json").write_text("{")
    line = compare_error_line(compare(searches, "slow", "broken"))
    assert "broken (capacity.json): not a readable capacity search report (JSONDecodeError" in line, line


def test_cli_json_and_markdown_hold_the_comparison(searches: Path) -> None:
    proc = compare(searches, "slow", "fast", "--json", "c.json", "--markdown", "c.md")
    assert proc.returncode == 0, describe(proc)
    data = json.loads((searches / "c.json").read_text())
    c = data["capacity"]
    assert (c["verdict"], c["ratio"], c["ratio_low"], c["ratio_high"]) == ("better", 2.0, 1.0, 4.0)
    assert (c["baseline_capacity"], c["baseline_capacity_upper"]) == (8, 16)
    assert (c["candidate_capacity"], c["candidate_capacity_upper"]) == (16, 32)
    assert (c["knob"], c["target"], c["slo"]) == ("scheduler.request_rate", 0.9, SLO)
    assert "low = candidate capacity / baseline capacity_upper" in data["method"]
    assert "| candidate | 16 | 32 | 2 | 2 |" in (searches / "c.md").read_text()
    save(searches / "open", 32, None)
    proc = compare(searches, "open", "fast", "--json", "open.json")
    assert proc.returncode == 0, describe(proc)
    c = json.loads((searches / "open.json").read_text(), parse_constant=pytest.fail)["capacity"]
    assert (c["ratio"], c["ratio_low"], c["ratio_high"], c["verdict"]) == (None, 0.0, 1.0, "worse")
    assert "the baseline held every scheduler.request_rate it probed (up to 32)" in c["notes"][0]


def test_cli_reads_capacity_from_sweep_parent_runs_and_logs_the_comparison(searches: Path) -> None:
    """Each side a sweep's parent run in a real SQLite store with capacity.json at its artifacts' root (as
    the capacity sweep logs it); a run with results.json is a run, not a capacity search."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{searches / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("capacity", artifact_location=str(searches / "mlruns"))
    ids = {}
    for name, artifact in (("slow", "capacity.json"), ("fast", "capacity.json"), ("run", "results.json")):
        ids[name] = client.create_run(experiment, run_name=name).info.run_id
        client.log_artifact(ids[name], str(searches / name / artifact))
        client.set_terminated(ids[name])
    proc = compare(searches, ids["slow"], ids["fast"], "--uri", uri, "--log", "--json", "ids.json")
    assert proc.returncode == 0 and "not logged" not in proc.stderr, describe(proc)
    assert f"baseline run {ids['slow']}" in proc.stdout and "Downloading" not in proc.stderr
    c = json.loads((searches / "ids.json").read_text())["capacity"]
    assert (c["verdict"], c["baseline_run_id"], c["candidate_run_id"]) == ("better", ids["slow"], ids["fast"])
    [logged] = client.search_runs([client.get_experiment_by_name("rosebench-compare").experiment_id])
    assert logged.data.metrics == {
        "capacity_ratio": 2.0,
        "capacity_ratio_low": 1.0,
        "capacity_ratio_high": 4.0,
    }
    assert logged.data.tags["capacity_verdict"] == "better"
    assert [logged.data.tags["baseline_run_id"], logged.data.tags["candidate_run_id"]] == [
        ids["slow"],
        ids["fast"],
    ]
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"comparison.md", "comparison.json"}
    line = compare_error_line(compare(searches, ids["slow"], ids["run"], "--uri", uri))
    assert line.endswith(f"the candidate {ids['run']} is a run"), line


# -- one real search ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_search_against_a_copy_with_a_higher_bracket(tmp_path: Path) -> None:
    """A real capacity search through the CLI, then its folder copied with capacity.json moved one bracket
    up. Its TTFT bound (1 microsecond) is one no request meets, so that its bracket is the same on any
    machine however busy: each probe fails at once (0 of 12 met) and the search halves from 64 until the
    budget of 3 runs is spent, holding nothing below 16. A bound near the machine's real TTFT would move the
    bracket from run to run, and a search that held every value would leave it open above, where no
    comparison can say "better"."""
    proc = run_cli(
        tmp_path,
        "--multirun",
        "hydra/sweeper=capacity",
        "engine=tiny",
        "mode=online",
        "num_requests=12",
        "max_new_tokens=4",
        "warmup=0",
        "repeat=1",
        "slo.ttft_ms=0.001",
        "slo.attainment=0.9",
        "hydra.sweeper.start=64",
        "hydra.sweeper.budget=3",
        "tracking=off",
        "hydra.sweep.dir=real",
    )
    assert_ok(proc)
    real = CapacityReport.load(tmp_path / "real")
    assert [(p.value, p.verdict) for p in real.probes] == [(64, "fail"), (32, "fail"), (16, "fail")]
    assert (real.capacity, real.capacity_upper) == (None, 16)
    shutil.copytree(tmp_path / "real", tmp_path / "higher")
    real.capacity, real.capacity_upper = 16.0, 32.0  # holds the load the real search did not
    real.save(tmp_path / "higher")

    better = compare(tmp_path, "real", "higher", "--fail-if-worse", "5", "--json", "c.json")
    assert better.returncode == 0, describe(better)
    assert (
        "capacity ratio -, interval [1.000, unbounded]: better (the candidate held "
        "scheduler.request_rate=16, the baseline did not hold 16)"
    ) in better.stdout, describe(better)
    assert "the baseline held no scheduler.request_rate it probed (down to 16)" in better.stdout
    assert "baseline   none   16  " in better.stdout and "candidate  16     32  " in better.stdout
    c = json.loads((tmp_path / "c.json").read_text())["capacity"]
    assert (c["verdict"], c["ratio_low"], c["ratio_high"], c["slo"]["ttft_ms"]) == (
        "better",
        1.0,
        None,
        0.001,
    )
    worse = compare(tmp_path, "higher", "real", "--fail-if-worse", "0")
    assert worse.returncode == 1, describe(worse)
    assert "capacity ratio -, interval [0.000, 1.000]: worse" in worse.stdout
    itself = compare(tmp_path, "real", "real")
    assert itself.returncode == 0 and "cannot tell (the brackets overlap)" in itself.stdout, describe(itself)
    line = compare_error_line(compare(tmp_path, "real", "real", "--fail-if-worse", "5"))
    assert "has no upper bound, because the baseline held no scheduler.request_rate it probed" in line, line


def test_command_lines_that_differ_are_noted_key_by_key():
    baseline, candidate = side(8, 16, "base"), side(8, 16, "cand")
    baseline.report.overrides = ["engine=gpt2", "num_requests=64", "tracking.uri=sqlite:///a.db"]
    candidate.report.overrides = ["engine=gpt2", "num_requests=32", "engine.attention=naive"]
    notes = compare_capacity(baseline, candidate).notes
    assert "the searches' command lines differ: num_requests = 64 vs 32" in notes
    assert "the searches' command lines differ: engine.attention = (unset) vs naive" in notes
    assert not any("engine=" in n or "tracking.uri" in n for n in notes)  # same value; where results went
