"""Profiling: the trace summary against hand-computed numbers; real CPU profiles through ProfileSession."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch.profiler import record_function

from rosebench.profiling import (
    NullProfileSession,
    ProfileScheduleWarning,
    ProfileSession,
    ProfileSettings,
    TraceSummary,
    profile_session,
    summarize_trace,
    summarize_traces,
)
from rosebench.profiling.session import profiler_activities

CPU = torch.device("cpu")
HOST = {"pid": 1, "tid": 1}
GPU = {"pid": 0, "tid": 7}


def _x(cat: str, name: str, ts: float, dur: float, where: dict, **args: object) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, **where, "args": args}


def _gpu_trace() -> dict:
    """Three profiler steps [0, 300) us: a prefill step, then two decode steps; times in microseconds."""
    ann, op = "user_annotation", "cpu_op"
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
        _x(ann, "ProfilerStep#2", 0, 100, HOST),
        _x(ann, "ProfilerStep#3", 100, 100, HOST),
        _x(ann, "ProfilerStep#4", 200, 100, HOST),
        _x("gpu_user_annotation", "ProfilerStep#3", 100, 100, GPU),  # GPU mirror: not a step
        _x(ann, "rosebench.engine.prefill", 10, 80, HOST),
        _x(ann, "rosebench.engine.decode", 110, 80, HOST),
        _x(ann, "rosebench.engine.decode", 210, 60, HOST),
        _x("gpu_user_annotation", "rosebench.engine.decode", 140, 40, GPU),  # GPU mirror: not a label
        _x(ann, "rosebench.model.forward", 20, 50, HOST),
        _x(ann, "rosebench.model.forward", 120, 40, HOST),
        _x(ann, "rosebench.model.forward", 220, 30, HOST),
        _x(ann, "not_ours", 5, 5, HOST),
        _x(op, "aten::mm", 30, 10, HOST),  # prefill: not counted
        _x(op, "aten::linear", 125, 20, HOST),  # decode A: 3 ops, nested ones included
        _x(op, "aten::mm", 127, 10, HOST),
        _x(op, "aten::argmax", 170, 5, HOST),
        _x(op, "aten::copy_", 195, 3, HOST),  # between decode regions: not counted
        _x(op, "aten::add", 130, 5, {"pid": 1, "tid": 2}),  # other thread: not counted
        _x(op, "aten::mm", 225, 10, HOST),  # decode B: 2 ops
        _x(op, "aten::argmax", 250, 5, HOST),
        # Launch calls on the host; their correlation ids tie the device events below to them.
        _x("cuda_runtime", "cudaLaunchKernel", 32, 2, HOST, correlation=1),  # prefill
        _x("cuda_runtime", "cudaLaunchKernel", 128, 2, HOST, correlation=2),  # decode A
        _x("cuda_runtime", "cudaLaunchKernel", 172, 2, HOST, correlation=3),  # decode A
        _x("cuda_runtime", "cudaMemcpyAsync", 180, 2, HOST, correlation=4),  # decode A, not a kernel
        _x("cuda_runtime", "cudaMemsetAsync", 196, 2, HOST, correlation=6),  # outside decode
        _x("cuda_driver", "cuLaunchKernel", 226, 2, HOST, correlation=5),  # decode B
        {"ph": "s", "cat": "ac2g", "name": "ac2g", "id": 2, "ts": 128, **HOST},
        {"ph": "f", "cat": "ac2g", "name": "ac2g", "id": 2, "ts": 140, "bp": "e", **GPU},
        # Device timeline: busy [40,70] [140,180] [190,195] [200,204] [290,300] -> 30+40+5+4+10 = 89 us.
        _x("kernel", "warmup_kernel", -20, 10, GPU, correlation=0),  # before the window: clipped away
        _x("kernel", "k_prefill", 40, 30, GPU, correlation=1),
        _x("kernel", "k_decode_a1", 140, 30, GPU, correlation=2),
        _x("kernel", "k_decode_a2", 160, 20, {"pid": 0, "tid": 8}, correlation=3),  # other stream, overlaps
        _x("gpu_memcpy", "Memcpy DtoH", 190, 5, GPU, correlation=4),
        _x("gpu_memset", "Memset", 200, 4, GPU, correlation=6),
        _x("kernel", "k_decode_b", 290, 20, GPU, correlation=5),  # runs past the window end
    ]
    return {"traceEvents": events}


def test_summary_of_a_hand_written_gpu_trace():
    s = summarize_trace(_gpu_trace())
    assert s.window_ms == pytest.approx(0.3)
    assert s.steps == 3
    assert s.decode_steps == 2
    labels = {"rosebench.engine.prefill", "rosebench.engine.decode", "rosebench.model.forward"}
    assert set(s.labels) == labels
    assert s.labels["rosebench.engine.decode"].count == 2
    assert s.labels["rosebench.engine.decode"].total_ms == pytest.approx(0.14)
    assert s.labels["rosebench.engine.decode"].share == pytest.approx(140 / 300)
    assert s.labels["rosebench.model.forward"].count == 3
    assert s.labels["rosebench.model.forward"].total_ms == pytest.approx(0.12)
    assert s.labels["rosebench.engine.prefill"].share == pytest.approx(80 / 300)
    assert s.cpu_ops_per_decode_step == pytest.approx(5 / 2)
    assert s.kernels_per_decode_step == pytest.approx(3 / 2)
    assert s.device_busy_ms == pytest.approx(0.089)
    assert s.device_idle_fraction == pytest.approx(1 - 89 / 300)
    assert TraceSummary.from_dict(json.loads(json.dumps(s.to_dict()))) == s  # round-trips through JSON


def test_cycles_combine_as_if_laid_end_to_end():
    one, two = summarize_trace(_gpu_trace()), summarize_traces([_gpu_trace(), _gpu_trace()])
    assert two.window_ms == pytest.approx(2 * one.window_ms)
    assert two.steps == 2 * one.steps
    assert two.labels["rosebench.engine.decode"].count == 4
    for key in ("cpu_ops_per_decode_step", "kernels_per_decode_step", "device_idle_fraction"):
        assert getattr(two, key) == pytest.approx(getattr(one, key))


def test_cpu_only_trace_has_null_device_figures_and_no_trace_gives_zero_steps():
    cpu_only = {"traceEvents": [e for e in _gpu_trace()["traceEvents"] if e.get("pid") != 0]}
    s = summarize_trace(cpu_only)
    assert s.kernels_per_decode_step is None
    assert s.device_busy_ms is None and s.device_idle_fraction is None
    assert s.cpu_ops_per_decode_step == pytest.approx(2.5)

    empty = summarize_traces([])
    assert empty.steps == 0 and empty.window_ms == 0 and empty.labels == {}
    assert empty.cpu_ops_per_decode_step == 0


def test_metrics_and_console_table():
    s = summarize_trace(_gpu_trace())
    m = s.metrics()
    assert m["steps"] == 3
    assert m["kernels_per_decode_step"] == pytest.approx(1.5)
    assert m["device_idle_fraction"] == pytest.approx(1 - 89 / 300)
    assert m["label_engine_decode_ms"] == pytest.approx(0.14)
    assert m["label_model_forward_share"] == pytest.approx(120 / 300)
    assert all(isinstance(v, float) for v in m.values())
    cpu_only = {"traceEvents": [e for e in _gpu_trace()["traceEvents"] if e.get("pid") != 0]}
    assert "kernels_per_decode_step" not in summarize_trace(cpu_only).metrics()

    table = s.format()
    lines = table.splitlines()
    assert "3 steps" in lines[0] and "device idle 70.3%" in lines[0]
    assert lines[2].startswith("rosebench.engine.decode")  # longest total first
    assert "46.7%" in lines[2]


def _scheduler_pass(session: ProfileSession | NullProfileSession, requests: int, decodes: int) -> int:
    """Imitates a scheduler: per request a prefill step then decode steps, one session.step() per step."""
    weight = torch.randn(16, 16)
    steps = 0
    for _ in range(requests):
        for kind in ["prefill"] + ["decode"] * decodes:
            with record_function("rosebench.scheduler.step"), record_function(f"rosebench.engine.{kind}"):
                with record_function("rosebench.model.forward"):
                    logits = torch.randn(4 if kind == "prefill" else 1, 16) @ weight
                with record_function("rosebench.sampler.sample"):
                    logits.argmax(dim=-1)
            session.step()
            steps += 1
    return steps


def _load(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def test_real_cpu_profile_through_session(tmp_path: Path):
    # 2 requests x (prefill + 3 decodes) = 8 steps; active steps 2..6: decode, decode, prefill, decode x2.
    settings = ProfileSettings(enabled=True, wait=1, warmup=1, active=5)
    with profile_session(settings, tmp_path, CPU) as session:
        _scheduler_pass(session, requests=2, decodes=3)
    result = session.result
    assert isinstance(session, ProfileSession) and session.steps == 8
    assert result.warnings == []
    assert result.traces == [tmp_path / "trace_0.json.gz"]
    assert (tmp_path / "key_averages.txt").read_text().count("rosebench.engine.decode") >= 1

    names = [e.get("name") for e in _load(result.traces[0])["traceEvents"]]
    assert names.count("rosebench.engine.prefill") == 1
    assert names.count("rosebench.engine.decode") == 4

    summary = result.summary
    assert TraceSummary.from_dict(json.loads((tmp_path / "summary.json").read_text())) == summary
    assert summary.steps == 5 and summary.decode_steps == 4
    assert summary.window_ms > 0
    assert summary.cpu_ops_per_decode_step > 0
    assert summary.kernels_per_decode_step is None and summary.device_idle_fraction is None
    averages = {e.key: e.count for e in result.key_averages[0]}
    for label, stats in summary.labels.items():
        assert stats.count == averages[label]
        assert 0 < stats.share <= 1
    assert {
        "rosebench.engine.prefill",
        "rosebench.engine.decode",
        "rosebench.scheduler.step",
        "rosebench.model.forward",
        "rosebench.sampler.sample",
    } <= set(summary.labels)


def test_short_pass_warns_and_keeps_what_it_recorded(tmp_path: Path):
    settings = ProfileSettings(enabled=True, wait=1, warmup=1, active=3)  # needs 0+1+1+3 = 5 steps
    warns = pytest.warns(ProfileScheduleWarning, match=r"ran 3 steps .* = 0\+1\+1\+3 = 5;")
    with warns, ProfileSession(settings, tmp_path, CPU) as session:
        _scheduler_pass(session, requests=1, decodes=2)
    result = session.result
    assert result.warnings and "ran 3 steps" in result.warnings[0]
    # Stopping mid-active exported the one active step; the empty step opened by the last step() is dropped.
    assert result.traces == [tmp_path / "trace_0.json.gz"]
    assert result.summary.steps == 1 and result.summary.decode_steps == 1
    assert "# warning: profiled pass ran 3 steps" in (tmp_path / "key_averages.txt").read_text()


def test_pass_ending_before_any_active_step_writes_an_empty_summary(tmp_path: Path):
    warns = pytest.warns(ProfileScheduleWarning, match="ran 1 steps .*nothing was recorded")
    with warns, ProfileSession(ProfileSettings(enabled=True, wait=1, warmup=1), tmp_path, CPU) as session:
        _scheduler_pass(session, requests=1, decodes=0)
    assert session.result.traces == [] and not list(tmp_path.glob("trace_*"))
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 0


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # torch's note on repeat > 1
def test_repeat_writes_one_trace_per_cycle(tmp_path: Path):
    settings = ProfileSettings(enabled=True, wait=1, warmup=1, active=2, repeat=2)
    with ProfileSession(settings, tmp_path, CPU) as session:
        _scheduler_pass(session, requests=2, decodes=3)
    result = session.result
    assert result.traces == [tmp_path / "trace_0.json.gz", tmp_path / "trace_1.json.gz"]
    assert len(result.key_averages) == 2
    assert result.summary.steps == 4
    per_cycle = [summarize_trace(p).labels["rosebench.scheduler.step"].count for p in result.traces]
    assert per_cycle == [2, 2]


def test_disabled_profiling_has_no_profiler(tmp_path: Path):
    with profile_session(ProfileSettings(enabled=False), tmp_path / "prof", CPU) as session:
        assert _scheduler_pass(session, requests=1, decodes=2) == 3
    assert isinstance(session, NullProfileSession) and session.result is None
    assert not (tmp_path / "prof").exists()


def test_settings_validation_and_activities():
    assert ProfileSettings(**{"enabled": True, "wait": 1, "warmup": 1, "active": 2}).steps_needed == 4
    assert profiler_activities(ProfileSettings(), torch.device("cuda")) == [
        torch.profiler.ProfilerActivity.CPU,
        torch.profiler.ProfilerActivity.CUDA,
    ]
    assert profiler_activities(ProfileSettings(activities="CPU"), torch.device("cuda")) == [
        torch.profiler.ProfilerActivity.CPU
    ]
    with pytest.raises(ValueError, match="active"):
        ProfileSettings(active=0)
    with pytest.raises(ValueError, match=r"profile.activities=cpu,tpu: unknown \['tpu'\]"):
        ProfileSettings(activities="cpu,tpu")
    assert ProfileSettings(activities="cpu, cuda").activity_names() == ["cpu", "cuda"]
