"""Real profiles: the engine and schedulers profiled through the runner's profiled pass, each label the
production code emits counted against the scheduler steps the workload makes."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rosebench.config import RunConfig
from rosebench.engine import Engine, EngineConfig, SamplingParams
from rosebench.profiling import (
    NullProfileSession,
    ProfileScheduleWarning,
    ProfileSettings,
    TraceSummary,
    profile_session,
    summarize_trace,
)
from rosebench.runner.benchmark import Outcome, prepare, run_passes
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import JsonlWorkload, Request

README = Path(__file__).parents[1] / "README.md"
FORWARD_LABELS = (
    "rosebench.engine.prepare",
    "rosebench.model.forward",
    "rosebench.model.lm_head",
    "rosebench.sampler.sample",
)
LAYER_LABELS = ("rosebench.attention.kv_write", "rosebench.attention.attend")


@dataclass(frozen=True)
class Step:
    """One scheduler step of a pass: its kind and the KV work it does besides the forward."""

    kind: str  # "prefill" or "decode"
    admitted: int = 0
    prefix_copies: int = 0  # admissions whose cached prompt block sits in another slot, copied in
    moves: int = 0  # running sequences moved down to the lowest slots before a decode, by a swap


def expected_counts(steps: list[Step], *, layers: int = 0, static_decode: bool = False) -> dict[str, int]:
    """Each label's count over ``steps``. Every step: its own region and postprocess. Every eager forward:
    prepare, forward, lm_head, sample, and ``layers`` kv_write and attend. Every decode step: compact, and
    with ``static_decode`` one static_step in place of the eager forward."""
    counts: Counter[str] = Counter()
    for step in steps:
        counts[f"rosebench.engine.{step.kind}"] += 1
        counts["rosebench.engine.postprocess"] += 1
        counts["rosebench.engine.admit"] += step.admitted
        counts["rosebench.kv.copy_blocks"] += step.prefix_copies
        counts["rosebench.kv.swap_blocks"] += step.moves
        if step.kind == "decode":
            counts["rosebench.kv.compact"] += 1
        if step.kind == "decode" and static_decode:
            counts["rosebench.engine.static_step"] += 1
        else:
            counts.update(FORWARD_LABELS)
            counts.update(dict.fromkeys(LAYER_LABELS, layers))
    return dict(+counts)  # labels that never ran are absent from a trace


def label_counts(summary: TraceSummary) -> dict[str, int]:
    return {label: stats.count for label, stats in summary.labels.items()}


# The workload: requests 0 and 1 as (prompt token ids, max_new_tokens), their prompts sharing their first
# KV block (block_size 16).
HEAD = list(range(1000, 1016))
SHORT = (HEAD + [1], 2)
LONG = (HEAD + [2], 4)
# Offline: request 1 waits one step for request 0's prompt block to be computed, then takes it as a prefix
# hit, copied from slot 0 into its slot 1. Request 0 finishes at the first decode; at the next, request 1
# moves down to slot 0.
OFFLINE_STEPS = [
    Step("prefill", admitted=1),
    Step("prefill", admitted=1, prefix_copies=1),
    Step("decode"),
    Step("decode", moves=1),
    Step("decode"),
]
# Online with max_concurrency=1: request 1 is sent once request 0 has finished, and lands in slot 0, where
# the cached block already is: no copy, no move.
ONLINE_STEPS = [
    Step("prefill", admitted=1),
    Step("decode"),
    Step("prefill", admitted=1),
    Step("decode"),
    Step("decode"),
    Step("decode"),
]


def profiled_run(
    tmp_path: Path,
    profile: ProfileSettings,
    *,
    mode: str = "offline",
    prompts: tuple[tuple[list[int], int], ...] = (SHORT, LONG),
    static_decode: bool = False,
) -> tuple[Outcome, Engine]:
    """The passes ``python -m rosebench`` runs (``prepare``, then ``run_passes``): one timed pass, then the
    profiled one, writing to ``tmp_path / "profile"``; the tiny model on the CPU."""
    workload = tmp_path / "workload.jsonl"
    lines = [json.dumps({"prompt_token_ids": ids, "max_new_tokens": new}) + "\n" for ids, new in prompts]
    workload.write_text("".join(lines))
    config = RunConfig(
        mode=mode,
        num_requests=len(prompts),
        warmup=0,
        repeat=1,
        scheduler=SchedulerConfig(max_batch_size=4, max_concurrency=1 if mode == "online" else None),
        engine=EngineConfig(model="tiny", device="cpu", max_num_seqs=4),
        sampling=SamplingParams(ignore_eos=True),
        workload=JsonlWorkload(path=str(workload)),
        profile=profile,
    )
    setup = prepare(config)
    if static_decode:  # the step CUDA graphs and torch.compile run, here eager on the CPU
        setup = dataclasses.replace(setup, engine=Engine(setup.config.engine, static_decode=True))
    outcome = run_passes(setup, tmp_path)
    assert outcome.profile_error is None
    return outcome, setup.engine


@pytest.mark.parametrize("detail", ["step", "layer"])
@pytest.mark.parametrize(
    ("mode", "static_decode", "steps"),
    [
        pytest.param("offline", False, OFFLINE_STEPS, id="offline"),
        pytest.param("online", False, ONLINE_STEPS, id="online"),
        pytest.param("offline", True, OFFLINE_STEPS, id="offline-static"),
    ],
)
def test_profiled_pass_counts_each_label_once_per_region_run(
    mode: str, static_decode: bool, steps: list[Step], detail: str, tmp_path: Path
) -> None:
    profile = ProfileSettings(enabled=True, active=len(steps), detail=detail)  # the window: the whole pass
    outcome, engine = profiled_run(tmp_path, profile, mode=mode, static_decode=static_decode)
    kinds = Counter(step.kind for step in steps)
    timed = outcome.passes[0].stats
    assert (timed.prefill_steps, len(timed.decode_step_s)) == (kinds["prefill"], kinds["decode"])

    result = outcome.profile
    assert result.steps == len(steps) and result.warnings == []
    layers = engine.model_config.n_layer if detail == "layer" else 0
    # Per-layer labels cannot live inside a static step (nor a CUDA graph): layer detail decodes eagerly.
    expected = expected_counts(steps, layers=layers, static_decode=static_decode and detail == "step")
    assert label_counts(result.summary) == expected
    assert {e.key: e.count for e in result.key_averages[0] if e.key.startswith("rosebench.")} == expected
    assert (result.summary.steps, result.summary.decode_steps) == (len(steps), kinds["decode"])
    assert not engine.layer_labels  # the runner turns them off again after the profiled pass


def test_trace_window_starts_after_the_wait_steps(tmp_path: Path) -> None:
    outcome, _ = profiled_run(tmp_path, ProfileSettings(enabled=True, wait=1, active=3))
    result = outcome.profile
    assert result.steps == len(OFFLINE_STEPS) and result.warnings == []
    assert result.traces == [tmp_path / "profile" / "trace_0.json.gz"]
    summary = result.summary
    assert label_counts(summary) == expected_counts(OFFLINE_STEPS[1:4])
    assert TraceSummary.from_dict(json.loads(result.summary_path.read_text())) == summary
    assert all(0 < stats.share <= 1 for stats in summary.labels.values())
    assert summary.window_ms > 0 and summary.cpu_ops_per_decode_step > 0
    assert summary.kernels_per_decode_step is None and summary.device_idle_fraction is None
    key_averages = result.key_averages_path.read_text()
    assert key_averages.startswith("# cycle 0 (trace_0.json.gz)\n")
    assert "rosebench.engine.decode" in key_averages


def test_short_pass_warns_and_keeps_what_it_recorded(tmp_path: Path) -> None:
    settings = ProfileSettings(enabled=True, wait=1, warmup=1, active=5)  # needs 7 steps, the pass makes 5
    with pytest.warns(ProfileScheduleWarning, match=r"ran 5 steps .* = 0\+1\+1\+5 = 7;"):
        outcome, _ = profiled_run(tmp_path, settings)
    result = outcome.profile
    assert result.warnings and "ran 5 steps" in result.warnings[0]
    # Stopping mid-active exported steps 3 to 5; the empty step opened by the last step() is dropped.
    assert result.traces == [tmp_path / "profile" / "trace_0.json.gz"]
    assert label_counts(result.summary) == expected_counts(OFFLINE_STEPS[2:])
    assert result.summary.steps == 3
    assert "# warning: profiled pass ran 5 steps" in result.key_averages_path.read_text()


def test_pass_ending_before_any_active_step_writes_an_empty_summary(tmp_path: Path) -> None:
    one_step = (([5], 1),)  # the prefill gives the only token
    with pytest.warns(ProfileScheduleWarning, match="ran 1 steps .*nothing was recorded"):
        outcome, _ = profiled_run(tmp_path, ProfileSettings(enabled=True, wait=1, warmup=1), prompts=one_step)
    assert outcome.profile.traces == [] and not list((tmp_path / "profile").glob("trace_*"))
    assert json.loads(outcome.profile.summary_path.read_text())["steps"] == 0


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # torch's note on repeat > 1
def test_repeat_writes_one_trace_per_cycle(tmp_path: Path) -> None:
    longer = (LONG[0], LONG[1] + 3)
    steps = OFFLINE_STEPS + [Step("decode")] * 3
    settings = ProfileSettings(enabled=True, wait=1, warmup=1, active=2, repeat=2)  # steps 3-4 and 7-8
    outcome, _ = profiled_run(tmp_path, settings, prompts=(SHORT, longer))
    result = outcome.profile
    assert result.steps == len(steps)
    assert result.traces == [tmp_path / "profile" / f"trace_{cycle}.json.gz" for cycle in (0, 1)]
    assert len(result.key_averages) == 2
    per_cycle = [label_counts(summarize_trace(path)) for path in result.traces]
    assert per_cycle == [expected_counts(steps[2:4]), expected_counts(steps[6:8])]
    assert label_counts(result.summary) == expected_counts(steps[2:4] + steps[6:8])


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param({}, id="default"),
        pytest.param({"active": 1, "repeat": 0}, id="every-step-its-own-cycle"),
        pytest.param({"wait": 1, "warmup": 1, "active": 1, "repeat": 2}, id="wait-warmup-repeat"),
        pytest.param({"skip_first": 2, "active": 2}, id="skip-first"),
        pytest.param({"warmup": 1, "active": 9}, id="stopped-by-the-pass-end"),
    ],
)
def test_kineto_marks_no_start_or_stop_of_a_trace_on_stderr(
    schedule: dict, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """libkineto logs ``profiler_start``/``profiler_stop`` to fd 2 wherever a trace starts or stops: on
    entering, at a step, or on leaving the session. Every such call is filtered, whatever the schedule."""
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileScheduleWarning)
        outcome, _ = profiled_run(tmp_path, ProfileSettings(enabled=True, **schedule))
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "USDT" not in err, err
    assert outcome.profile.traces and outcome.profile.summary.steps > 0


def test_profiling_off_runs_the_pass_with_no_profiler(tmp_path: Path) -> None:
    engine = Engine(EngineConfig(model="tiny", device="cpu", max_num_seqs=2, max_model_len=16))
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    requests = [Request(i, [100 + i, 200 + i], params, arrival_s=0.0) for i in range(2)]
    profiler_on: list[bool] = []
    with profile_session(ProfileSettings(enabled=False), tmp_path / "profile", engine.device) as session:

        def on_step(kind: str) -> None:
            session.step()
            profiler_on.append(torch.autograd.profiler._is_profiler_enabled)

        OfflineScheduler(engine, SchedulerConfig(), on_step=on_step).run(requests)
    assert isinstance(session, NullProfileSession) and session.result is None
    assert profiler_on == [False] * 3  # a prefill and two decodes
    assert not (tmp_path / "profile").exists()


def _expand(pattern: str) -> list[str]:
    """``rosebench.kv.{compact,copy_blocks}`` -> its labels, as the README writes a family."""
    head, brace, rest = pattern.partition("{")
    if not brace:
        return [pattern]
    names, _, tail = rest.partition("}")
    return [head + name + tail for name in names.split(",")]


def test_readme_lists_exactly_the_labels_these_tests_count() -> None:
    section = README.read_text().split("Labels:", 1)[1].split("With profiling off", 1)[0]
    documented = {label for found in re.findall(r"`(rosebench\.[^`]+)`", section) for label in _expand(found)}
    eager = expected_counts(OFFLINE_STEPS, layers=1)
    static = expected_counts(OFFLINE_STEPS, static_decode=True)
    assert documented == set(eager) | set(static)
