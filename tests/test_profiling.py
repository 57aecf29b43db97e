"""Profiling: the trace summary of hand-written traces against hand-computed numbers, the settings, and the
filter of kineto's lines on stderr. Real profiles of the engine are in test_profile_engine.py."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable

import pytest
import torch

from rosebench.profiling import ProfileSettings, TraceSummary, summarize_trace, summarize_traces
from rosebench.profiling.kineto_log import CLEARS_EVENTS, QuietKineto
from rosebench.profiling.session import profiler_activities

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


def test_cpu_only_trace_has_null_device_figures_and_no_trace_has_no_figures():
    cpu_only = {"traceEvents": [e for e in _gpu_trace()["traceEvents"] if e.get("pid") != 0]}
    s = summarize_trace(cpu_only)
    assert s.kernels_per_decode_step is None
    assert s.device_busy_ms is None and s.device_idle_fraction is None
    assert s.cpu_ops_per_decode_step == pytest.approx(2.5)

    # Nothing recorded: no window, nothing per decode step; the counts of what was recorded are 0.
    for empty in (summarize_traces([]), summarize_trace({"traceEvents": []})):
        assert (empty.steps, empty.decode_steps, empty.labels) == (0, 0, {})
        assert empty.window_ms is None and empty.cpu_ops_per_decode_step is None
        assert empty.metrics() == {"steps": 0.0, "decode_steps": 0.0}
        assert empty.format() == (
            "profile: 0 steps in - ms, 0 decode steps, cpu ops/decode step -, kernels/decode step -, "
            "device busy - ms, device idle -"
        )
        assert TraceSummary.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty


def test_a_window_without_decode_steps_has_no_per_decode_step_figures():
    """The prefill step alone, with its kernel: window, labels and device figures; nothing per decode step."""
    prefill = [e for e in _gpu_trace()["traceEvents"] if e.get("ts", 0) < 100 and e.get("cat") != "ac2g"]
    s = summarize_trace({"traceEvents": prefill})
    assert s.steps == 1 and s.decode_steps == 0 and s.window_ms == pytest.approx(0.1)
    assert s.cpu_ops_per_decode_step is None and s.kernels_per_decode_step is None
    assert s.device_busy_ms == pytest.approx(0.03) and s.device_idle_fraction == pytest.approx(0.7)
    assert s.labels["rosebench.engine.prefill"].share == pytest.approx(0.8)
    assert "cpu_ops_per_decode_step" not in s.metrics() and "kernels_per_decode_step" not in s.metrics()
    assert "cpu ops/decode step -, kernels/decode step -," in s.format()


def test_summaries_written_with_zeros_for_unmeasured_figures_read_as_none():
    """summary.json and results.json from before: 0.0 for a window that recorded nothing and per decode step
    with no decode step."""
    nothing = {"window_ms": 0.0, "steps": 0, "decode_steps": 0, "labels": {}, "cpu_ops_per_decode_step": 0.0}
    nothing |= {"kernels_per_decode_step": None, "device_busy_ms": None, "device_idle_fraction": None}
    s = TraceSummary.from_dict(nothing)
    assert s == summarize_traces([])
    assert s.metrics() == {"steps": 0.0, "decode_steps": 0.0}

    prefill_only = nothing | {"window_ms": 2.0, "steps": 1, "kernels_per_decode_step": 0.0}
    prefill_only["labels"] = {"rosebench.engine.prefill": {"count": 1, "total_ms": 1.5, "share": 0.75}}
    prefill_only |= {"device_busy_ms": 0.5, "device_idle_fraction": 0.75}
    s = TraceSummary.from_dict(prefill_only)
    assert s.window_ms == 2.0 and s.labels["rosebench.engine.prefill"].share == 0.75
    assert s.cpu_ops_per_decode_step is None and s.kernels_per_decode_step is None
    assert s.device_idle_fraction == 0.75


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


# CUDA traces as kineto writes them (field names and cbids as in HolisticTraceAnalysis's real test traces):
# eager decode steps launch kernel by kernel; a graph-replayed decode step is one cudaGraphLaunch whose
# kernels all carry that launch's correlation id. Times are microseconds after BASE_US.
BASE_US = 1_700_000_000_000
DECODE = "rosebench.engine.decode"
STREAM, SIDE_STREAM = 7, 20
CBID = {"cudaLaunchKernel": 211, "cudaMemcpyAsync": 41, "cudaStreamSynchronize": 131, "cudaGraphLaunch": 311}


def _flow(ph: str, corr: int, ts: float, where: dict) -> dict:
    """An end of the ``ac2g`` arrow kineto draws from a launch call to each piece of device work it caused."""
    flow = {"ph": ph, "id": corr, "ts": ts, "cat": "ac2g", "name": "ac2g", **where}
    return {**flow, "bp": "e"} if ph == "f" else flow  # "f" binds to the enclosing slice


class _CudaTrace:
    """A kineto-style trace under construction; correlation ids are handed out in launch order."""

    def __init__(self) -> None:
        self.events: list[dict] = [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
            {"ph": "M", "name": "process_labels", "pid": 0, "tid": 0, "args": {"labels": "GPU 0"}},
        ]
        self.correlation = 1000

    def host(self, cat: str, name: str, ts: float, dur: float, where: dict = HOST) -> None:
        self.events.append(_x(cat, name, BASE_US + ts, dur, where, **{"External id": len(self.events)}))

    def launch(self, name: str, ts: float, dur: float, where: dict = HOST) -> int:
        """A runtime call on a host thread, where its ``ac2g`` flow arrow starts; returns its correlation."""
        self.correlation += 1
        corr, ts = self.correlation, BASE_US + ts
        args = {"External id": corr, "cbid": CBID[name], "correlation": corr}
        self.events.append(_x("cuda_runtime", name, ts, dur, where, **args))
        self.events.append(_flow("s", corr, ts, where))
        return corr

    def device(
        self, cat: str, name: str, ts: float, dur: float, corr: int, stream: int = STREAM, node: int = 0
    ) -> None:
        """Device work on a stream, tied to its launch by ``correlation``; graph nodes get ``graph id`` 1."""
        where, ts = {"pid": 0, "tid": stream}, BASE_US + ts
        args = {"External id": corr, "device": 0, "context": 1, "stream": stream, "correlation": corr}
        args |= {"graph id": 1 if node else 0, "graph node id": node}
        self.events.append(_x(cat, name, ts, dur, where, **args))
        self.events.append(_flow("f", corr, ts, where))

    def trace(self) -> dict:
        return {"schemaVersion": 1, "traceEvents": self.events}


def _prefill_step(t: _CudaTrace, n: int, at: float) -> None:
    """ProfilerStep#n = [at, at+100): 4 kernels launched from prefill, run at [at+15, at+55): 40 us busy."""
    t.host("user_annotation", f"ProfilerStep#{n}", at, 100)
    t.host("user_annotation", "rosebench.engine.prefill", at + 5, 60)
    for i in range(4):
        corr = t.launch("cudaLaunchKernel", at + 10 + 5 * i, 2)
        t.device("kernel", f"prefill_kernel_{i}", at + 15 + 10 * i, 10, corr)


def _eager_decode_step(t: _CudaTrace, n: int, at: float) -> None:
    """ProfilerStep#n = [at, at+100). The decode region [at+5, at+30) runs 4 ops, each launching one thing:
    3 kernels and the copy of the sampled ids. The device lags behind: kernels at [12,32) [32,52) [52,72),
    copy at [72,74), mostly after the region closed, so busy [at+12, at+74) = 62 us. The scheduler then
    waits for the ids outside the region (a sync with no device work)."""
    t.host("user_annotation", f"ProfilerStep#{n}", at, 100)
    t.host("user_annotation", DECODE, at + 5, 25)
    launched = []
    for i, op in enumerate(["aten::mm", "aten::add", "aten::argmax", "aten::copy_"]):
        t.host("cpu_op", op, at + 9 + 5 * i, 4)
        launched.append(t.launch("cudaMemcpyAsync" if i == 3 else "cudaLaunchKernel", at + 10 + 5 * i, 2))
    for i, corr in enumerate(launched[:3]):
        t.device("kernel", f"decode_kernel_{i}", at + 12 + 20 * i, 20, corr)
    t.device("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", at + 72, 2, launched[3])
    t.launch("cudaStreamSynchronize", at + 31, 44)


def _graph_decode_step(t: _CudaTrace, n: int, at: float, kernels: int = 12) -> None:
    """ProfilerStep#n = [at, at+100). The decode region [at+5, at+20) copies the inputs in (run [10,12)),
    replays the graph with one cudaGraphLaunch and copies the ids out. The graph's kernels, 2 us each and
    all with the launch's correlation, run back to back from at+25, after the region closed; the ids' copy
    follows (1 us). With 12 kernels: busy 2 + 24 + 1 = 27 us."""
    t.host("user_annotation", f"ProfilerStep#{n}", at, 100)
    t.host("user_annotation", DECODE, at + 5, 15)
    t.host("cpu_op", "aten::copy_", at + 6, 3)
    inputs = t.launch("cudaMemcpyAsync", at + 7, 1)
    graph = t.launch("cudaGraphLaunch", at + 10, 5)
    t.host("cpu_op", "aten::copy_", at + 16, 3)
    ids = t.launch("cudaMemcpyAsync", at + 17, 1)
    t.launch("cudaStreamSynchronize", at + 21, 30)  # the scheduler waits for the ids: not in the region
    t.device("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", at + 10, 2, inputs)
    for i in range(kernels):
        t.device("kernel", f"graph_kernel_{i}", at + 25 + 2 * i, 2, graph, node=i + 1)
    t.device("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", at + 25 + 2 * kernels, 1, ids)


def _decode_trace(decode_step: Callable[[_CudaTrace, int, float], None]) -> dict:
    """A prefill step, then three decode steps built by ``decode_step``, 100 us each."""
    t = _CudaTrace()
    _prefill_step(t, 10, 0)
    for n in (11, 12, 13):
        decode_step(t, n, 100 * (n - 10))
    return t.trace()


def _eager_trace() -> dict:
    return _decode_trace(_eager_decode_step)


def _graph_trace() -> dict:
    return _decode_trace(_graph_decode_step)


def test_eager_decode_steps_count_their_own_kernels_even_when_they_run_late():
    s = summarize_trace(_eager_trace())
    # 4 steps of 100 us: window 400 us; 3 decode regions.
    assert s.window_ms == pytest.approx(0.4)
    assert s.steps == 4 and s.decode_steps == 3
    # 3 kernels per decode step; prefill's 4 kernels and the copies of the sampled ids are not decode kernels.
    assert s.kernels_per_decode_step == pytest.approx(9 / 3)
    assert s.cpu_ops_per_decode_step == pytest.approx(12 / 3)
    # Busy: prefill 40 + 3 decode steps x 62 = 226 us of 400.
    assert s.device_busy_ms == pytest.approx(0.226)
    assert s.device_idle_fraction == pytest.approx(1 - 226 / 400)


def test_graph_replay_kernels_belong_to_the_step_that_launched_the_graph():
    s = summarize_trace(_graph_trace())
    assert s.window_ms == pytest.approx(0.4)
    assert s.steps == 4 and s.decode_steps == 3
    # One cudaGraphLaunch per decode step replays 12 kernels; the 2 copies per step are not kernels.
    assert s.kernels_per_decode_step == pytest.approx(36 / 3)
    assert s.cpu_ops_per_decode_step == pytest.approx(6 / 3)
    # Busy: prefill 40 + 3 graph steps x 27 = 121 us of 400.
    assert s.device_busy_ms == pytest.approx(0.121)
    assert s.device_idle_fraction == pytest.approx(1 - 121 / 400)
    # An eager cycle and a graph cycle combine: (9 + 36) kernels over 6 decode steps, (226 + 121) us of 800.
    both = summarize_traces([_eager_trace(), _graph_trace()])
    assert both.kernels_per_decode_step == pytest.approx(45 / 6)
    assert both.device_idle_fraction == pytest.approx(1 - 347 / 800)


def test_graph_kernels_on_two_streams_count_once_and_gaps_between_steps_are_idle():
    t = _CudaTrace()
    other_thread = {"pid": 1, "tid": 2}
    # Step A [0, 100): one graph launch, 4 kernels on two streams; union [20, 70) = 50 us.
    t.host("user_annotation", "ProfilerStep#5", 0, 100)
    t.host("user_annotation", DECODE, 5, 10)
    a = t.launch("cudaGraphLaunch", 8, 4)
    t.device("kernel", "a0", 20, 20, a, STREAM, node=1)  # [20, 40)
    t.device("kernel", "a1", 40, 20, a, STREAM, node=2)  # [40, 60)
    t.device("kernel", "a2", 30, 20, a, SIDE_STREAM, node=3)  # [30, 50): inside the stream-7 work
    t.device("kernel", "a3", 55, 15, a, SIDE_STREAM, node=4)  # [55, 70): extends it to 70
    # Step B [100, 200): one graph launch, 3 kernels; [150, 170) on both streams counts 20 us, and the
    # last kernel [185, 215) runs past the window's end: [185, 200) = 15 us.
    t.host("user_annotation", "ProfilerStep#6", 100, 100)
    t.host("user_annotation", DECODE, 105, 10)
    b = t.launch("cudaGraphLaunch", 108, 4)
    t.device("kernel", "b0", 150, 20, b, STREAM, node=1)
    t.device("kernel", "b1", 150, 20, b, SIDE_STREAM, node=2)
    t.device("kernel", "b2", 185, 30, b, SIDE_STREAM, node=3)
    # Another thread replays a graph while B's region is open: busy [120, 125) = 5 us, not a decode kernel.
    c = t.launch("cudaGraphLaunch", 110, 4, other_thread)
    t.device("kernel", "c0", 120, 5, c, SIDE_STREAM, node=1)

    s = summarize_trace(t.trace())
    assert s.window_ms == pytest.approx(0.2)
    assert s.steps == 2 and s.decode_steps == 2
    assert s.kernels_per_decode_step == pytest.approx((4 + 3) / 2)
    # Busy 50 + 20 + 15 + 5 = 90 us; idle gaps [0,20) [70,120) [125,150) [170,185) = 20+50+25+15 = 110 us.
    assert s.device_busy_ms == pytest.approx(0.090)
    assert s.device_idle_fraction == pytest.approx(110 / 200)


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


KINETO_ROUTINE = (
    b"USDT:2026-12-06 11:23:33 4444:4444 SyncActivityProfilerHandler.cpp:39] profiler_start\n"
    b"USDT:2026-12-06 11:23:33 4444:4444 SyncActivityProfilerHandler.cpp:46] profiler_stop\n"
)
NO_GPU = (
    b"ERROR:2026-12-06 11:23:33 4444:4444 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n"
)
REAL_ERROR = b"ERROR:2026-12-06 11:23:33 4444:4444 CuptiActivityApi.cpp:300] CUPTI_ERROR_NOT_INITIALIZED\n"


@pytest.mark.parametrize("cuda_profiled", [False, True])
def test_kineto_routine_lines_are_dropped_and_every_other_line_kept(cuda_profiled, capfd):
    """What reaches fd 2 inside ``quiet()``, from C or Python's own stderr, comes out in order, less
    kineto's start/stop markers and, with no CUDA activity profiled, its failed GPU count."""
    other = b"USDT: a line of another shape] profiler_started\nno newline"
    capfd.readouterr()
    with QuietKineto(cuda_profiled=cuda_profiled) as kineto, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in range(2):
            print(f"before {call}", file=sys.__stderr__)  # buffered: flushed before fd 2 moves
            with kineto.quiet():
                os.write(2, KINETO_ROUTINE[:40])  # a line written in pieces is still one line
                os.write(2, KINETO_ROUTINE[40:] + NO_GPU + REAL_ERROR)
                print(f"python {call}", file=sys.__stderr__)
                os.write(2, other)
                warnings.warn(
                    CLEARS_EVENTS + ". Only events from the current cycle will be reported.", stacklevel=1
                )
            os.write(2, b"\n")
    kept = (NO_GPU if cuda_profiled else b"") + REAL_ERROR
    expected = b"".join(b"before %d\n" % c + kept + b"python %d\n" % c + other + b"\n" for c in range(2))
    assert capfd.readouterr().err == expected.decode()
    assert caught == []


def test_kineto_filter_writes_back_what_it_captured_when_the_call_raises(capfd):
    capfd.readouterr()
    with QuietKineto(cuda_profiled=False) as kineto:
        with pytest.raises(RuntimeError, match="inside"), kineto.quiet():
            os.write(2, KINETO_ROUTINE + REAL_ERROR)
            raise RuntimeError("inside")
        os.write(2, b"after\n")
    assert capfd.readouterr().err == (REAL_ERROR + b"after\n").decode()
    with pytest.raises(RuntimeError, match="outside its with-block"), kineto.quiet():
        pass
