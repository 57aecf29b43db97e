"""Summarize torch.profiler Chrome traces: where the profiled window's time went, per labelled region.

Trace facts this relies on (checked on torch 2.13; category names from kineto's ActivityType table):
- complete events have ``ph == "X"`` with ``ts``/``dur`` in microseconds;
- ``record_function`` regions are ``cat == "user_annotation"`` on the CPU thread that opened them. On CUDA
  kineto also mirrors them onto the GPU timeline as ``gpu_user_annotation``; those copies are ignored
  so that nothing is counted twice;
- schedule steps are ``ProfilerStep#N`` regions (``user_annotation`` in torch 2.13, ``cpu_op`` in older
  releases, so they are matched by name);
- device work is ``kernel`` / ``gpu_memcpy`` / ``gpu_memset``. Each carries ``args.correlation``, the id
  of the ``cuda_runtime`` (or ``cuda_driver``) launch call on the CPU thread that issued it;
- a CUDA-graph replay is one ``cuda_runtime`` ``cudaGraphLaunch`` (cbid 311) and every kernel, memcpy and
  memset the graph runs carries that call's ``correlation``, often starting long after it returned (real
  traces in HolisticTraceAnalysis ``tests/data/trace_diff/test/test.json.gz``: 315 kernels and 24 memsets
  per launch). Kineto logs no ``cuGraphLaunch`` (its driver events are kernel launches and cuMem* calls;
  ``CuptiCbidRegistry.cpp``), adds ``graph id``/``graph node id`` to device events on CUDA 12+
  (``CuptiActivity.h``) and draws one ``ac2g`` flow from the launch to each of them; only the
  correlation is needed here.

A kernel belongs to a decode step when its launch call ran inside a ``rosebench.engine.decode`` region on
the same thread. That correlation is exact even when a kernel runs long after its launch (asynchronous
execution) or when one CUDA-graph launch issues many kernels, which time overlap cannot handle.
"""

from __future__ import annotations

import gzip
import json
import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rosebench.files import write_atomic

LABEL_PREFIX = "rosebench."
UNMEASURED = "-"  # printed for a figure with no samples, as the runner's summary table does
DECODE_LABEL = "rosebench.engine.decode"
STEP_PREFIX = "ProfilerStep#"
DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
LAUNCH_CATEGORIES = frozenset({"cuda_runtime", "cuda_driver"})

Trace = dict[str, Any] | str | Path
Interval = tuple[float, float]


def load_trace(trace: Trace) -> dict[str, Any]:
    """A trace as a dict, read from a ``.json`` or ``.json.gz`` file unless it already is one."""
    if isinstance(trace, dict):
        return trace
    path = Path(trace)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


@dataclass
class LabelStats:
    count: int
    total_ms: float
    # Of the profiled window (None without one); nested labels overlap, so shares need not sum to 1.
    share: float | None


@dataclass
class TraceSummary:
    """Where a profiled window's time went. A figure with no samples is None, never 0: the window's figures
    when nothing was recorded (the profiler never reached an active step), the per-decode-step figures
    when the window holds no decode step, the device figures unless the traces hold device events.
    ``steps`` and ``decode_steps`` count what was recorded, so they are 0 then."""

    window_ms: float | None
    steps: int
    decode_steps: int
    labels: dict[str, LabelStats]
    cpu_ops_per_decode_step: float | None
    kernels_per_decode_step: float | None = None
    device_busy_ms: float | None = None
    device_idle_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceSummary:
        """Also reads summaries written before unmeasured figures were None: their 0.0 for a window that
        recorded nothing, or per decode step with no decode step, read as None."""
        data = {**data, "window_ms": data.get("window_ms") or None}
        if not data.get("decode_steps"):
            data |= {"cpu_ops_per_decode_step": None, "kernels_per_decode_step": None}
        labels = {name: LabelStats(**stats) for name, stats in data["labels"].items()}
        return cls(**{**data, "labels": labels})

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def metrics(self) -> dict[str, float]:
        """Flat names (``device_idle_fraction``, ``label_engine_decode_ms``, ...); None figures left out."""
        metrics = {key: float(getattr(self, key)) for key in _SCALAR_KEYS if getattr(self, key) is not None}
        for label, stats in self.labels.items():
            name = re.sub(r"\W", "_", label.removeprefix(LABEL_PREFIX))
            metrics[f"label_{name}_ms"] = float(stats.total_ms)
            if stats.share is not None:
                metrics[f"label_{name}_share"] = float(stats.share)
        return metrics

    def format(self) -> str:
        """A compact console table: the headline figures, then one row per label, longest total first."""

        def fmt(value: float | None, spec: str) -> str:
            return UNMEASURED if value is None else format(value, spec)

        lines = [
            f"profile: {self.steps} steps in {fmt(self.window_ms, '.3f')} ms, "
            f"{self.decode_steps} decode steps, "
            f"cpu ops/decode step {fmt(self.cpu_ops_per_decode_step, '.1f')}, "
            f"kernels/decode step {fmt(self.kernels_per_decode_step, '.1f')}, "
            f"device busy {fmt(self.device_busy_ms, '.3f')} ms, "
            f"device idle {fmt(self.device_idle_fraction, '.1%')}"
        ]
        rows = sorted(self.labels.items(), key=lambda item: -item[1].total_ms)
        if rows:
            width = max(len("label"), *(len(label) for label, _ in rows))
            lines.append(f"{'label':<{width}}  {'count':>7}  {'total ms':>10}  {'share':>7}")
            lines += [
                f"{label:<{width}}  {s.count:>7}  {s.total_ms:>10.3f}  {fmt(s.share, '.1%'):>7}"
                for label, s in rows
            ]
        return "\n".join(lines)


_SCALAR_KEYS = (
    "window_ms",
    "steps",
    "decode_steps",
    "cpu_ops_per_decode_step",
    "kernels_per_decode_step",
    "device_busy_ms",
    "device_idle_fraction",
)


def summarize_trace(trace: Trace) -> TraceSummary:
    return summarize_traces([trace])


def summarize_traces(traces: Sequence[Trace]) -> TraceSummary:
    """Summary over the traces of several profiler cycles, as if their windows were laid end to end."""
    total = _Tally()
    for trace in traces:
        total.add(_tally(load_trace(trace).get("traceEvents", [])))
    return total.summary()


@dataclass
class _Tally:
    """Additive raw counts, so that several cycles combine exactly before any ratio is taken."""

    window_us: float = 0.0
    steps: int = 0
    labels: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))
    decode_steps: int = 0
    decode_cpu_ops: int = 0
    decode_kernels: int = 0
    device_events: int = 0
    device_busy_us: float = 0.0

    def add(self, other: _Tally) -> None:
        for name in (
            "window_us",
            "steps",
            "decode_steps",
            "decode_cpu_ops",
            "decode_kernels",
            "device_events",
            "device_busy_us",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for label, (count, total_us) in other.labels.items():
            self.labels[label][0] += count
            self.labels[label][1] += total_us

    def summary(self) -> TraceSummary:
        """Ratios with nothing to divide by are None: no window (nothing recorded), no decode step."""
        window = self.window_us or None
        has_device = self.device_events > 0
        return TraceSummary(
            window_ms=_ratio(window, 1e3),
            steps=self.steps,
            decode_steps=self.decode_steps,
            labels={
                label: LabelStats(int(count), total_us / 1e3, _ratio(total_us, window))
                for label, (count, total_us) in sorted(self.labels.items())
            },
            cpu_ops_per_decode_step=_ratio(self.decode_cpu_ops, self.decode_steps),
            kernels_per_decode_step=_ratio(self.decode_kernels, self.decode_steps) if has_device else None,
            device_busy_ms=self.device_busy_us / 1e3 if has_device else None,
            device_idle_fraction=_complement(_ratio(self.device_busy_us, window)) if has_device else None,
        )


def _ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None (unmeasured, never 0) when either is missing or the denominator is 0."""
    return num / den if num is not None and den else None


def _complement(fraction: float | None) -> float | None:
    return None if fraction is None else 1.0 - fraction


def _tally(events: Iterable[dict[str, Any]]) -> _Tally:
    spans = [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in spans:
        by_cat[e.get("cat", "")].append(e)

    steps = _profiler_steps(spans)
    start, end = _span(steps or spans)
    tally = _Tally(window_us=end - start, steps=len(steps))

    annotations = by_cat["user_annotation"]
    for e in annotations:
        if e["name"].startswith(LABEL_PREFIX):
            tally.labels[e["name"]][0] += 1
            tally.labels[e["name"]][1] += e["dur"]

    decode = [e for e in annotations if e["name"] == DECODE_LABEL]
    tally.decode_steps = len(decode)
    tally.decode_cpu_ops = len(_starting_inside(decode, by_cat["cpu_op"]))
    launches = _starting_inside(decode, [e for cat in LAUNCH_CATEGORIES for e in by_cat[cat]])
    decode_ids = {_correlation(e) for e in launches} - {None}
    tally.decode_kernels = sum(1 for e in by_cat["kernel"] if _correlation(e) in decode_ids)

    device = [e for cat in DEVICE_CATEGORIES for e in by_cat[cat]]
    tally.device_events = len(device)
    tally.device_busy_us = _union_length([(e["ts"], e["ts"] + e["dur"]) for e in device], start, end)
    return tally


def _profiler_steps(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CPU-side ProfilerStep regions, minus the empty one that stopping the profiler mid-cycle leaves.

    ``prof.step()`` opens ``ProfilerStep#N+1`` at once; when the pass ends before the cycle does, that region
    is closed by ``stop()`` with no work in it and would count as one step too many.
    """
    steps = [e for e in spans if e["name"].startswith(STEP_PREFIX) and e.get("cat") != "gpu_user_annotation"]
    steps.sort(key=lambda e: e["ts"])
    if steps:
        # Only host-side work counts: kineto may log runtime calls (a final sync) while the profiler stops.
        others = [
            e
            for e in spans
            if e.get("cat") in ("cpu_op", "user_annotation") and not e["name"].startswith(STEP_PREFIX)
        ]
        if not _starting_inside(steps[-1:], others):
            steps.pop()
    return steps


def _span(events: list[dict[str, Any]]) -> Interval:
    if not events:
        return 0.0, 0.0
    return min(e["ts"] for e in events), max(e["ts"] + e["dur"] for e in events)


def _thread(event: dict[str, Any]) -> tuple[Any, Any]:
    return event.get("pid"), event.get("tid")


def _correlation(event: dict[str, Any]) -> Any:
    return event.get("args", {}).get("correlation")


def _starting_inside(regions: list[dict[str, Any]], events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that start within one of ``regions`` on the same thread (regions nest on a thread)."""
    per_thread: dict[tuple[Any, Any], list[Interval]] = defaultdict(list)
    for r in regions:
        per_thread[_thread(r)].append((r["ts"], r["ts"] + r["dur"]))
    merged = {thread: _merge(intervals) for thread, intervals in per_thread.items()}
    starts = {thread: [lo for lo, _ in intervals] for thread, intervals in merged.items()}
    inside = []
    for e in events:
        thread = _thread(e)
        if thread not in merged:
            continue
        i = bisect_right(starts[thread], e["ts"]) - 1
        if i >= 0 and e["ts"] <= merged[thread][i][1]:
            inside.append(e)
    return inside


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _union_length(intervals: list[Interval], start: float, end: float) -> float:
    """Length of the union of ``intervals`` clipped to [start, end]: overlapping streams count once."""
    clipped = [(max(lo, start), min(hi, end)) for lo, hi in intervals]
    return sum(hi - lo for lo, hi in _merge([(lo, hi) for lo, hi in clipped if hi > lo]))
