"""PNG plots of the headline metrics against each swept parameter (for sweep parents and reports)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Figure + savefig needs no pyplot and no global backend switch (Agg is used for PNGs): safe in a library.
from matplotlib.figure import Figure

PLOTTED_METRICS: dict[str, str] = {
    "throughput_completion_tok_s": "completion throughput (tok/s)",
    "request_throughput_req_s": "request throughput (req/s)",
    "ttft_ms_p50": "TTFT p50 (ms)",
    "tpot_ms_p50": "TPOT p50 (ms)",
    "e2e_ms_p50": "E2E latency p50 (ms)",
}


@dataclass
class SweepPoint:
    """One run as the plots see it: its parameter values (as text), its metrics and their standard
    deviation over the timed passes (the error bars)."""

    params: Mapping[str, str]
    metrics: Mapping[str, float]
    spread: Mapping[str, float] = field(default_factory=dict)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _x_axis(values: Sequence[str]) -> tuple[dict[str, float], str]:
    """Where each value goes on the x axis, and the axis kind: linear, log (wide range) or category (text, or
    a value no axis can place: ``scheduler.request_rate=inf``)."""
    numbers = {v: _as_float(v) for v in values}
    if any(n is None or not math.isfinite(n) for n in numbers.values()):
        return {v: float(i) for i, v in enumerate(numbers)}, "category"
    positions = {v: n for v, n in numbers.items() if n is not None}
    low, high = min(positions.values()), max(positions.values())
    return positions, "log" if low > 0 and high >= 16 * low else "linear"


def metric_vs_param_figure(points: Sequence[SweepPoint], param: str, swept: Sequence[str]) -> Figure:
    """A panel per plotted metric against `param`, a line per setting of the other swept params, error
    bars of one standard deviation over the passes; the legend beside the panels, off the data."""
    points = [pt for pt in points if param in pt.params]  # a run killed before logging params has no x
    others = [p for p in swept if p != param]
    positions, axis = _x_axis([pt.params[param] for pt in points])
    series: dict[str, list[SweepPoint]] = {}
    for pt in points:
        series.setdefault(", ".join(f"{o}={pt.params.get(o, '')}" for o in others), []).append(pt)

    fig = Figure(figsize=(4 * len(PLOTTED_METRICS) + (2.5 if others else 0), 3.6), layout="constrained")
    axes = fig.subplots(1, len(PLOTTED_METRICS), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, PLOTTED_METRICS.items(), strict=True):
        for name, members in series.items():
            xye = sorted(
                (positions[pt.params[param]], pt.metrics[metric], pt.spread.get(metric, 0.0))
                for pt in members
                if metric in pt.metrics
            )
            if xye:
                xs, ys, errors = zip(*xye, strict=True)
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name or None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
        if axis == "log":
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(positions.values()), list(positions))  # the swept values, as typed
    if others:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"headline metrics vs {param} (error bars: one standard deviation over the passes)")
    return fig


def plot_sweep(points: Sequence[SweepPoint], swept: Sequence[str], out_dir: Path) -> list[Path]:
    """A PNG per swept parameter in `out_dir`; none when nothing was swept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for param in swept:
        out = out_dir / f"metrics_vs_{_file_safe(param)}.png"
        metric_vs_param_figure(points, param, swept).savefig(out, dpi=100)
        paths.append(out)
    return paths


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name)
