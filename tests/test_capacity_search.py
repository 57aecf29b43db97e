"""The capacity search on its own: bracketing, bisection, repeated boundary probes, stopping rules, driven by
simulated systems whose true capacity the test knows (the CLI end to end is in test_capacity_cli.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rosebench.capacity import (
    CapacityReport,
    CapacitySearch,
    CapacitySettings,
    Probe,
    attainment_interval,
)
from rosebench.slo import SloConfig

REQUESTS = 200  # per run: enough that a clean pass or fail is decided in one trial at target 0.9


def run_search(search: CapacitySearch, attainment_at, requests: int = REQUESTS) -> list[float]:
    """Drive ``search`` against a system whose share of requests meeting the SLO at a value is
    ``attainment_at(value, trial)``; returns the values run, in order."""
    ran = []
    while (value := search.next_value()) is not None:
        trial = search.current.trials
        ran.append(value)
        search.record(round(attainment_at(value, trial) * requests), requests)
    return ran


def step_system(capacity: float):
    """Meets the SLO for every request up to ``capacity``, for half of them above it."""
    return lambda value, trial: 1.0 if value <= capacity else 0.5


def test_wilson_interval_matches_the_formula_at_the_edges():
    z = 1.959963984540054
    low, high = attainment_interval(10, 10, 0.95)
    assert low == pytest.approx(10 / (10 + z * z)) and high == pytest.approx(1.0)
    low, high = attainment_interval(0, 10, 0.95)
    assert low == pytest.approx(0.0) and high == pytest.approx(z * z / (10 + z * z))
    assert attainment_interval(0, 0, 0.95) == (0.0, 1.0)


@given(st.integers(0, 500), st.integers(1, 500), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_interval_holds_the_share_and_narrows_with_more_requests(met, requests, confidence):
    met = min(met, requests)
    low, high = attainment_interval(met, requests, confidence)
    assert 0 <= low <= met / requests <= high <= 1
    low4, high4 = attainment_interval(4 * met, 4 * requests, confidence)
    assert high4 - low4 <= high - low + 1e-12


def test_brackets_by_doubling_then_bisects_to_the_tolerance():
    search = CapacitySearch(CapacitySettings(start=1, tolerance=0.05, budget=50), target=0.9)
    ran = run_search(search, step_system(5.3))
    assert ran == [1, 2, 4, 8, 6, 5, 5.5, 5.25]  # doubling to the first failure, then midpoints
    assert search.lower is not None and search.upper is not None
    assert search.lower <= 5.3 < search.upper
    assert search.upper - search.lower <= 0.05 * search.lower
    assert "within 5%" in search.stop_reason
    assert all(p.trials == 1 for p in search.probes)  # clean verdicts need no second trial


def test_halves_from_a_start_above_capacity():
    search = CapacitySearch(CapacitySettings(start=64, tolerance=0.1, budget=50), target=0.9)
    ran = run_search(search, step_system(3))
    assert ran[:6] == [64, 32, 16, 8, 4, 2]
    assert search.lower <= 3 < search.upper


def test_repeats_only_the_probes_whose_interval_straddles_the_target():
    # At 4 the system sits at the target: one run's interval straddles 0.9, so the probe is run again up to
    # max_trials and, never clearing it, counts as not holding; clean probes run once.
    def system(value, trial):
        return 1.0 if value < 4 else 0.9 if value == 4 else 0.3

    settings_ = CapacitySettings(start=1, tolerance=0.05, budget=50, max_trials=3)
    search = CapacitySearch(settings_, target=0.9)
    run_search(search, system)
    boundary = next(p for p in search.probes if p.value == 4)
    assert boundary.trials == 3 and boundary.verdict == "unsure"
    assert boundary.requests == 3 * REQUESTS
    assert [p.trials for p in search.probes if p.value != 4] == [1] * (len(search.probes) - 1)
    assert search.upper <= 4  # unsure is not shown to hold
    assert search.lower < 4


def test_a_second_trial_can_decide_a_probe():
    # The first trial at 8 is borderline (straddles), the second is clean: pooled they clear the target.
    def system(value, trial):
        if value == 8:
            return 0.91 if trial == 0 else 1.0
        return 1.0 if value < 8 else 0.0

    search = CapacitySearch(CapacitySettings(start=8, budget=3, max_trials=3), target=0.9)
    run_search(search, system)
    first = search.probes[0]
    assert (first.trials, first.verdict) == (2, "pass")
    assert first.met == round(0.91 * REQUESTS) + REQUESTS


def test_budget_counts_every_trial_and_is_never_exceeded():
    search = CapacitySearch(CapacitySettings(start=1, budget=5, max_trials=3), target=0.9)
    ran = run_search(search, lambda value, trial: 0.9)  # always straddling: every probe repeats
    assert len(ran) == search.runs == 5
    assert "budget of 5 runs" in search.stop_reason
    assert search.probes[0].trials == 3 and search.probes[0].verdict == "unsure"
    assert search.probes[1].verdict == "unsure"  # decided when the budget ran out mid-probe


def test_target_never_met_stops_at_the_floor():
    search = CapacitySearch(CapacitySettings(start=8, budget=50), target=0.9)
    ran = run_search(search, lambda value, trial: 0.2)
    assert ran == [8, 4, 2, 1, 0.5, 0.25, 0.125]  # down to start / 64
    assert search.lower is None and search.upper == 0.125
    assert "not met even at 0.125" in search.stop_reason


def test_target_always_met_stops_at_the_ceiling_or_the_budget():
    search = CapacitySearch(CapacitySettings(start=1, budget=50, max_value=20), target=0.9)
    assert run_search(search, lambda value, trial: 1.0) == [1, 2, 4, 8, 16, 20]
    assert search.upper is None and search.lower == 20
    assert "met up to hydra.sweeper.max_value=20" in search.stop_reason
    search = CapacitySearch(CapacitySettings(start=1, budget=4), target=0.9)
    assert run_search(search, lambda value, trial: 1.0) == [1, 2, 4, 8]
    assert search.upper is None and "budget" in search.stop_reason


def test_an_integer_knob_stops_at_neighbouring_integers():
    settings_ = CapacitySettings(knob="scheduler.max_concurrency", start=1, budget=50)
    search = CapacitySearch(settings_, target=0.9)
    ran = run_search(search, step_system(11))
    assert all(v == int(v) for v in ran)
    assert (search.lower, search.upper) == (11, 12)
    assert "within 1" in search.stop_reason


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(0.2, 500),
    start=st.sampled_from([0.5, 1.0, 3.0, 10.0, 100.0]),
    budget=st.integers(1, 30),
    noise=st.lists(st.floats(0, 1), min_size=30, max_size=30),
)
def test_invariants_hold_for_any_system(capacity, start, budget, noise):
    """Whatever the system answers (here: a step plus noise that can flip verdicts): the budget is never
    exceeded, every new probe lies strictly inside the bracket so far, and the bracket is ordered."""
    answers = iter(noise)

    def system(value, trial):
        return next(answers) if value > capacity else max(0.0, 1.0 - next(answers) / 10)

    search = CapacitySearch(CapacitySettings(start=start, budget=budget), target=0.9)
    while (value := search.next_value()) is not None:
        if search.current.trials == 0:
            assert search.lower is None or value > search.lower
            assert search.upper is None or value < search.upper
        search.record(round(system(value, search.current.trials) * 50), 50)
    assert search.runs <= budget
    if search.lower is not None and search.upper is not None:
        assert search.lower < search.upper
    assert search.stop_reason


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("knob", "mode", "hydra.sweeper.knob=mode: not a load knob the search can move"),
        ("budget", 0, "hydra.sweeper.budget=0: must be >= 1"),
        ("max_trials", 0, "hydra.sweeper.max_trials=0: must be >= 1"),
        ("tolerance", 0.0, "hydra.sweeper.tolerance=0.0: must be in (0, 1)"),
        ("tolerance", 1.0, "hydra.sweeper.tolerance=1.0: must be in (0, 1)"),
        ("confidence", 1.0, "hydra.sweeper.confidence=1.0: must be in (0, 1)"),
        ("start", 0.0, "hydra.sweeper.start=0.0: must be a finite number > 0"),
        ("start", math.inf, "hydra.sweeper.start=inf: must be a finite number > 0"),
        ("min_value", 2.0, "hydra.sweeper.min_value=2.0: must be > 0 and <= hydra.sweeper.start=1.0"),
        ("max_value", 0.5, "hydra.sweeper.max_value=0.5: must be finite and >= hydra.sweeper.start=1.0"),
    ],
)
def test_settings_one_past_each_limit_are_refused(key, value, message):
    with pytest.raises(ValueError) as refused:
        CapacitySettings(**{key: value})
    assert str(refused.value).startswith(message)


def test_an_integer_knob_needs_an_integer_start():
    with pytest.raises(ValueError, match="scheduler.max_concurrency is an integer"):
        CapacitySettings(knob="scheduler.max_concurrency", start=1.5)
    CapacitySettings(knob="scheduler.max_concurrency", start=2)  # the limit itself is fine


def test_requests_needed_is_the_smallest_all_met_count_whose_interval_clears_the_target():
    settings_ = CapacitySettings()
    for target in (0.5, 0.9, 0.99):
        needed = settings_.requests_needed(target)
        assert attainment_interval(needed, needed, 0.95)[0] >= target
        assert attainment_interval(needed - 1, needed - 1, 0.95)[0] < target
    assert settings_.requests_needed(1.0) is None


def test_report_saves_and_loads_itself(tmp_path):
    search = CapacitySearch(CapacitySettings(start=2, budget=6), target=0.9)
    run_search(search, step_system(5))
    report = CapacityReport.of(
        search, {"ttft_ms": 100.0, "tpot_ms": None, "e2e_ms": None}, search.stop_reason
    )
    report.save(tmp_path)
    loaded = CapacityReport.load(tmp_path)
    assert loaded == report
    assert loaded.metrics() == {"capacity_req_s": search.lower, "capacity_upper_req_s": search.upper}
    assert isinstance(loaded.probes[0], Probe) and loaded.probes[0].interval == report.probes[0].interval
    assert f"scheduler.request_rate={search.lower:g} holds, {search.upper:g} does not" in loaded.summary()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ttft_ms", 0.0, "slo.ttft_ms=0.0: must be a finite number of ms > 0"),
        ("tpot_ms", -1.0, "slo.tpot_ms=-1.0: must be a finite number of ms > 0"),
        ("e2e_ms", math.inf, "slo.e2e_ms=inf: must be a finite number of ms > 0"),
        ("attainment", 0.0, "slo.attainment=0.0: must be in (0, 1]"),
        ("attainment", 1.01, "slo.attainment=1.01: must be in (0, 1]"),
    ],
)
def test_slo_values_past_each_limit_are_refused(key, value, message):
    with pytest.raises(ValueError) as refused:
        SloConfig(**{key: value})
    assert str(refused.value).startswith(message)


def test_slo_bounds_are_inclusive_and_a_missing_tpot_cannot_fail_a_request():
    slo = SloConfig(ttft_ms=100, tpot_ms=10)
    assert slo.met(100.0, 10.0, 5000.0)  # on the bound: met, as vLLM's
    assert not slo.met(100.1, 10.0, 0.0)
    assert not slo.met(50.0, 10.1, 0.0)
    assert slo.met(50.0, None, 0.0)  # one output token: no TPOT
    assert not SloConfig().bounded and SloConfig(e2e_ms=1).bounded
