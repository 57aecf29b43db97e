"""PNG plots of the headline metrics against each swept parameter (for sweep parents and reports): a figure
per metric, sized for MLflow's artifact viewer."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.axes import Axes

# Figure + savefig needs no pyplot and no global backend switch (Agg is used for PNGs): safe in a library.
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

PLOTTED_METRICS: dict[str, str] = {
    "throughput_completion_tok_s": "completion throughput (tok/s)",
    "request_throughput_req_s": "request throughput (req/s)",
    "ttft_ms_p50": "TTFT p50 (ms)",
    "tpot_ms_p50": "TPOT p50 (ms)",
    "e2e_ms_p50": "E2E latency p50 (ms)",
}

# A label that changes nothing in a run (`--multirun trial=0,1,2`): runs that differ only in it are repeats.
TRIAL = "trial"

# MLflow's artifact viewer fits a PNG to its pane: about 1000 px wide in a 1600 px window, about 680 px with
# its assistant panel open (as it opens on a first visit). A 1000 x 600 px figure with text of 12 pt or more
# (17 px; 11 px at 680) reads at both; five panels side by side in one 2000 px figure did not.
DPI = 100
FIGSIZE = (10.0, 6.0)
TITLE_FONT = 15
FONT = 13  # axis and tick labels
SMALL_FONT = 12  # legends, notes, point names


@dataclass
class SweepPoint:
    """One run as the plots see it: its parameter values (as text), its metrics and their standard
    deviation over the timed passes (the error bars)."""

    params: Mapping[str, str]
    metrics: Mapping[str, float]
    spread: Mapping[str, float] = field(default_factory=dict)


def legible(ax: Axes) -> None:
    """Tick labels at FONT: matplotlib's 10 pt default is 9 px once the viewer shrinks a figure to 680 px."""
    ax.tick_params(labelsize=FONT)


def legend_below(fig: Figure, ax: Axes, title: str | None = None) -> None:
    """`ax`'s legend below the axes, off the data, in as many columns as fit the figure's width (about 90
    characters of SMALL_FONT text, an entry's marker and gap counted as 6)."""
    handles, labels = ax.get_legend_handles_labels()
    columns = max(1, min(len(labels), 90 // (max(map(len, labels), default=1) + 6)))
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=columns,
        fontsize=SMALL_FONT,
        title=title,
        title_fontsize=SMALL_FONT,
    )


def as_number(text: str) -> float | None:
    """A param's value as a number, else None (text)."""
    try:
        return float(text)
    except ValueError:
        return None


def _x_axis(values: Sequence[str]) -> tuple[dict[str, float], str]:
    """Where each value goes on the x axis, and the axis kind: linear, log (wide range) or category (text, or
    a value no axis can place: ``scheduler.request_rate=inf``)."""
    numbers = {v: as_number(v) for v in values}
    if any(n is None or not math.isfinite(n) for n in numbers.values()):
        return {v: float(i) for i, v in enumerate(numbers)}, "category"
    positions = {v: n for v, n in numbers.items() if n is not None}
    low, high = min(positions.values()), max(positions.values())
    return positions, "log" if low > 0 and high >= 16 * low else "linear"


def _series(
    points: Sequence[SweepPoint], param: str, others: Sequence[str]
) -> dict[str, dict[str, list[SweepPoint]]]:
    """Series name (the other swept params' values) -> value of `param` -> the runs there."""
    series: dict[str, dict[str, list[SweepPoint]]] = {}
    for pt in points:
        if len(others) == 1:  # the legend's title names the one param
            name = pt.params.get(others[0], "")
        else:
            name = ", ".join(f"{o}={pt.params.get(o, '')}" for o in others)
        series.setdefault(name, {}).setdefault(pt.params[param], []).append(pt)
    return series


def metric_vs_param_figure(
    points: Sequence[SweepPoint], metric: str, param: str, swept: Sequence[str]
) -> Figure:
    """`metric` against `param`, a line per setting of the other swept params (`trial` aside).

    One run at a value: its point, error bars one standard deviation over its timed passes. Several (trials):
    each run a faint dot, the line through their mean with error bars of one standard deviation over them,
    so no line zigzags through repeats. Against `trial` itself no line at all: each trial's point, their
    mean dashed and one standard deviation as a band. Legends go below the axes, off the data.
    """
    placed = [pt for pt in points if param in pt.params]  # a run killed before logging params has no x
    positions, axis = _x_axis([pt.params[param] for pt in placed])
    others = [p for p in swept if p not in (param, TRIAL)]
    series = _series([pt for pt in placed if metric in pt.metrics], param, others)
    repeated = any(len(runs) > 1 for at in series.values() for runs in at.values())
    label = PLOTTED_METRICS.get(metric, metric)

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    for number, (name, at) in enumerate(series.items()):
        colour = f"C{number}"
        values = sorted(at, key=positions.__getitem__)
        if repeated and param != TRIAL:
            for value in values:
                for k, pt in enumerate(at[value]):
                    # Side by side, a few points apart: repeats with close figures stay countable.
                    beside = offset_copy(
                        ax.transData, fig=fig, x=6 * (k - (len(at[value]) - 1) / 2), units="points"
                    )
                    ax.plot(
                        positions[value], pt.metrics[metric], "o", color=colour, alpha=0.45, transform=beside
                    )
            # The offset hides the dots from autoscaling: their data must still fit in the limits.
            ax.update_datalim([(positions[v], pt.metrics[metric]) for v in values for pt in at[v]])
            means = [statistics.fmean(pt.metrics[metric] for pt in at[v]) for v in values]
            spreads = [statistics.pstdev([pt.metrics[metric] for pt in at[v]]) for v in values]
            xs = [positions[v] for v in values]
            ax.errorbar(xs, means, yerr=spreads, marker="o", color=colour, capsize=4, label=name or None)
            continue
        runs = [(positions[v], pt) for v in values for pt in at[v]]
        xs = [x for x, _ in runs]
        ys = [pt.metrics[metric] for _, pt in runs]
        errors = [pt.spread.get(metric, 0.0) for _, pt in runs]
        if param != TRIAL:
            ax.errorbar(xs, ys, yerr=errors, marker="o", color=colour, capsize=4, label=name or None)
            continue
        ax.errorbar(xs, ys, yerr=errors, fmt="o", color=colour, capsize=4, markersize=7)  # points, no line
        mean, spread = statistics.fmean(ys), statistics.pstdev(ys)
        where = f"{name}: " if name else ""
        label_mean = f"{where}mean {mean:.4g} ± {spread:.2g} over {len(ys)} trial(s)"
        ax.axhline(mean, color=colour, linestyle="--", label=label_mean)
        ax.axhspan(mean - spread, mean + spread, color=colour, alpha=0.12)
    if not series:
        ax.text(0.5, 0.5, f"no run has {metric}", ha="center", va="center", transform=ax.transAxes)
    if axis == "log":
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(positions.values()), list(positions))  # the swept values, as typed
    ax.margins(x=0.08)
    ax.set_xlabel(param, fontsize=FONT)
    ax.set_ylabel(label, fontsize=FONT)
    ax.grid(alpha=0.3)
    legible(ax)
    if param == TRIAL:
        note = "each trial, error bars ±1 sd over its passes; dashed: the trials' mean, band: ±1 sd over them"
    elif repeated:
        each = "each trial" if TRIAL in swept else "each run"
        note = f"dots: {each}; line: their mean at each value, error bars: one standard deviation over them"
    else:
        note = "error bars: one standard deviation over each run's timed passes"
    ax.set_title(note, fontsize=SMALL_FONT)
    if param == TRIAL or len(series) > 1:
        legend_below(fig, ax, others[0] if len(others) == 1 else None)
    fig.suptitle(f"{label} vs {param}", fontsize=TITLE_FONT, wrap=True)  # wrap: a param's name can be long
    return fig


def plot_sweep(points: Sequence[SweepPoint], swept: Sequence[str], out_dir: Path) -> list[Path]:
    """``<metric>_vs_<param>.png`` in `out_dir` for each swept param and each plotted metric some run has;
    none when nothing was swept. Beside another swept param, `trial` gets no plots of its own: its runs
    are the spread at each point of the others'."""
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = [m for m in PLOTTED_METRICS if any(m in pt.metrics for pt in points)]
    paths = []
    for param in [p for p in swept if p != TRIAL] or list(swept):
        for metric in measured:
            out = out_dir / f"{metric}_vs_{_file_safe(param)}.png"
            metric_vs_param_figure(points, metric, param, swept).savefig(out, dpi=DPI)
            paths.append(out)
    return paths


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name)
