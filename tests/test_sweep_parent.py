"""What a sweep's parent run holds as its own figures: each child's, never a composite of several."""

from __future__ import annotations

import math

from rosebench.tracking.sweep_parent import parent_figures

TPUT = "throughput_completion_tok_s"


def child(params: dict[str, str], throughput: float, ttft: float | None = None):
    metrics = {TPUT: throughput, **({} if ttft is None else {"ttft_ms_p50": ttft})}
    return params, metrics


def test_one_integer_knob_gives_each_childs_figures_with_step_the_knob():
    children = [child({"num_requests": "16"}, 30.0, 9.0), child({"num_requests": "1"}, 10.0, 2.0)]
    figures, meaning = parent_figures(children, ["num_requests"])
    assert figures[TPUT] == [(1, 10.0), (16, 30.0)]
    assert figures["ttft_ms_p50"] == [(1, 2.0), (16, 9.0)]
    assert meaning == "each child's figures with step = num_requests"


def test_a_non_integer_knob_steps_by_rank_and_names_each_rank():
    rates = ["inf", "0.5", "2"]
    children = [child({"scheduler.request_rate": r}, t) for r, t in zip(rates, (90.0, 10.0, 40.0))]
    figures, meaning = parent_figures(children, ["scheduler.request_rate"])
    assert figures[TPUT] == [(0, 10.0), (1, 40.0), (2, 90.0)]  # inf is the highest load
    assert meaning.endswith("the rank of scheduler.request_rate (0=0.5, 1=2, 2=inf)")


def test_repeats_at_one_value_are_averaged_not_picked():
    # A capacity search runs a value again (trials): its step holds their mean.
    children = [child({"scheduler.request_rate": "4"}, t) for t in (10.0, 14.0)]
    children.append(child({"scheduler.request_rate": "2"}, 8.0))
    figures, _ = parent_figures(children, ["scheduler.request_rate"])
    assert figures[TPUT] == [(2, 8.0), (4, 12.0)]


def test_a_trial_sweep_holds_the_mean_and_standard_deviation_over_trials():
    children = [child({"trial": str(i)}, t) for i, t in enumerate((10.0, 12.0, 14.0))]
    figures, meaning = parent_figures(children, ["trial"])
    assert figures[TPUT] == [(0, 12.0)]
    assert math.isclose(figures[f"{TPUT}_std"][0][1], math.sqrt(8 / 3))
    assert meaning.startswith("mean over the trials")


def test_several_knobs_or_text_values_give_the_parent_no_figure():
    two = [child({"a": "1", "b": "2"}, 1.0), child({"a": "2", "b": "1"}, 2.0)]
    assert parent_figures(two, ["a", "b"])[0] == {}
    text = [child({"engine.attention": "slot"}, 1.0), child({"engine.attention": "naive"}, 2.0)]
    figures, meaning = parent_figures(text, ["engine.attention"])
    assert figures == {} and meaning.startswith("none")
