"""PNG plots of the headline metrics against each swept parameter (for sweep parents and reports)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Figure + savefig needs no pyplot and no global backend switch (Agg is used for PNGs): safe in a library.
from matplotlib.figure import Figure

HEADLINE_METRICS: dict[str, str] = {
    "throughput_completion_tok_s": "completion throughput (tok/s)",
    "request_throughput_req_s": "request throughput (req/s)",
    "ttft_ms_p50": "TTFT p50 (ms)",
    "tpot_ms_p50": "TPOT p50 (ms)",
    "e2e_ms_p50": "E2E latency p50 (ms)",
}


@dataclass
class SweepPoint:
    """One run as the plots see it: its parameter values (as text) and its metrics."""

    params: Mapping[str, str]
    metrics: Mapping[str, float]


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _x_axis(values: Sequence[str]) -> tuple[dict[str, float], str]:
    """Where each value goes on the x axis, and the axis kind: linear, log (wide range) or category."""
    numbers = {v: _as_float(v) for v in values}
    if any(n is None for n in numbers.values()):
        return {v: float(i) for i, v in enumerate(numbers)}, "category"
    positions = {v: n for v, n in numbers.items() if n is not None}
    low, high = min(positions.values()), max(positions.values())
    return positions, "log" if low > 0 and high >= 16 * low else "linear"


def plot_metric_vs_param(points: Sequence[SweepPoint], param: str, swept: Sequence[str], out: Path) -> Path:
    """One PNG: a panel per headline metric against `param`, a line per setting of the other swept params."""
    points = [pt for pt in points if param in pt.params]  # a run killed before logging params has no x
    others = [p for p in swept if p != param]
    positions, axis = _x_axis([pt.params[param] for pt in points])
    series: dict[str, list[SweepPoint]] = {}
    for pt in points:
        series.setdefault(", ".join(f"{o}={pt.params.get(o, '')}" for o in others), []).append(pt)

    fig = Figure(figsize=(4 * len(HEADLINE_METRICS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(HEADLINE_METRICS), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, HEADLINE_METRICS.items(), strict=True):
        for name, members in series.items():
            xy = sorted(
                (positions[pt.params.get(param, "")], pt.metrics[metric])
                for pt in members
                if metric in pt.metrics
            )
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name or None)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
        if axis == "log":
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(positions.values()), list(positions))  # the swept values, as typed
    if others:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"headline metrics vs {param}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_sweep(points: Sequence[SweepPoint], swept: Sequence[str], out_dir: Path) -> list[Path]:
    """A PNG per swept parameter in `out_dir`; none when nothing was swept."""
    return [
        plot_metric_vs_param(points, p, swept, out_dir / f"metrics_vs_{_file_safe(p)}.png") for p in swept
    ]


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name)
