"""How much load a sweep held: latency against throughput, the per-user/total tokens/s Pareto frontier,
and the knee, for a sweep over a load knob (for sweep parents and ``rosebench.report``).

Definitions (they follow the field's, so that the plots read like theirs):

- Total output tokens/s (the frontier's x): ``throughput_completion_tok_s``, output tokens of the whole
  pass over its wall time; vLLM's ``output_throughput``, AIPerf's "Output Token Throughput".
- Tokens/s per user (its y): ``1000 / tpot_ms_mean``, the decode speed one user sees. AIPerf's "Output
  Token Throughput Per User" is 1 / ITL per request, its ITL being (latency - TTFT) / (output tokens - 1),
  which is our TPOT; a run keeps only the mean TPOT, so this is the speed of a request at the mean TPOT
  (at most AIPerf's mean of the per-request speeds, equal when every request decodes at one speed).
  vLLM's ``bench sweep plot_pareto`` instead divides total output tokens/s by the configured user count
  (``max_concurrency``, else ``request_rate``), which means nothing for a rate sweep.
- The frontier: the points no other point beats on both axes (both are maximized).
- The knee: in knob order, the first point whose TTFT p99 exceeds twice the TTFT p99 of the lowest-load
  point (the lowest knob value with a TTFT p99), within one setting of the other swept params.

A point missing a figure a plot needs is left out of that plot and named in the summary, never drawn as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from rosebench.tracking.plots import (
    DPI,
    FIGSIZE,
    FONT,
    SMALL_FONT,
    TITLE_FONT,
    SweepPoint,
    legend_below,
    legible,
)

# The settings that set how much traffic a run offers; a sweep over one gets the plots here.
LOAD_KNOBS = (
    "scheduler.request_rate",
    "scheduler.max_concurrency",
    "num_requests",
    "scheduler.max_batch_size",
)

REQUEST_THROUGHPUT = "request_throughput_req_s"
TOTAL_TOK_S = "throughput_completion_tok_s"
TTFT_P99 = "ttft_ms_p99"
TPOT_P99 = "tpot_ms_p99"
TPOT_MEAN = "tpot_ms_mean"
KNEE_FACTOR = 2.0
_LATENCY_NEEDS = (REQUEST_THROUGHPUT, TTFT_P99, TPOT_P99)
_NO_LIMIT = ("none", "null")  # a knob left unset (max_concurrency=null): no limit, the highest load

DEFINITIONS = {
    "total_output_tok_s": f"{TOTAL_TOK_S}: output tokens of the pass over its wall time (the frontier's x)",
    "per_user_output_tok_s": f"1000 / {TPOT_MEAN}: the decode speed of one request (the frontier's y)",
    "on_frontier": "no other point has both a higher or equal x and y, and one of them higher",
    "knee": f"in knob order, the first point whose {TTFT_P99} exceeds {KNEE_FACTOR:g} x that of the "
    "lowest knob value (per setting of the other swept params)",
}


@dataclass(frozen=True)
class LoadPoint:
    """One run of a load sweep: the knob's value as typed, as a number (for order), the other swept
    params' values (its line in the plots; "" when the knob alone was swept) and its metrics."""

    value: str
    load: float
    series: str
    metrics: Mapping[str, float]

    @property
    def total_tok_s(self) -> float | None:
        return self.metrics.get(TOTAL_TOK_S)

    @property
    def per_user_tok_s(self) -> float | None:
        """1000 / mean TPOT; None without a TPOT (every request had one output token)."""
        tpot = self.metrics.get(TPOT_MEAN)
        return 1000.0 / tpot if tpot is not None and tpot > 0 else None


@dataclass(frozen=True)
class Knee:
    """Where TTFT p99 first passed twice its low-load value; `point` None when it never did."""

    point: LoadPoint | None
    baseline: LoadPoint


def load_knobs(swept: Sequence[str]) -> list[str]:
    """The swept keys that are load knobs, in sweep order."""
    return [key for key in swept if key in LOAD_KNOBS]


def _load(value: str) -> float | None:
    if value.strip().lower() in _NO_LIMIT:
        return math.inf
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def load_points(
    points: Sequence[SweepPoint], knob: str, swept: Sequence[str]
) -> tuple[list[LoadPoint], list[str]]:
    """The sweep's runs as load points in knob order (each line's points together), and what was left out:
    runs without a readable knob value (one killed before logging its params)."""
    others = [key for key in swept if key != knob]
    found, skipped = [], []
    order: dict[str, tuple[tuple[float, str], ...]] = {}
    for pt in points:
        value = pt.params.get(knob)
        load = None if value is None else _load(value)
        if value is None or load is None:
            skipped.append(f"a run without {knob}" if value is None else f"{knob}={value}: not a number")
            continue
        series = ", ".join(f"{key}={pt.params.get(key, '')}" for key in others)
        found.append(LoadPoint(value, load, series, dict(pt.metrics)))
        order[series] = tuple(_sort_key(pt.params.get(key, "")) for key in others)
    return sorted(found, key=lambda p: (order[p.series], p.load)), skipped


def _sort_key(value: str) -> tuple[float, str]:
    """Numbers in numeric order (8 before 64), then text."""
    number = _load(value)
    return (math.inf, value) if number is None else (number, "")


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (in input order) of the points no other point dominates, both coordinates maximized: q
    dominates p when q is at least as large on both and larger on one. Equal points are all kept.

    Quadratic, and plainly the definition: a sweep has tens of points, not thousands.
    """

    def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
        return q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])

    return [i for i, p in enumerate(xy) if not any(dominates(q, p) for q in xy)]


def find_knee(points: Sequence[LoadPoint]) -> Knee | None:
    """The knee of one line's points (any order): None when no point has a TTFT p99 to compare."""
    timed = sorted((p for p in points if TTFT_P99 in p.metrics), key=lambda p: p.load)
    if not timed:
        return None
    baseline = timed[0]
    limit = KNEE_FACTOR * baseline.metrics[TTFT_P99]
    knee = next((p for p in timed[1:] if p.metrics[TTFT_P99] > limit), None)
    return Knee(knee, baseline)


def _series(points: Sequence[LoadPoint]) -> dict[str, list[LoadPoint]]:
    lines: dict[str, list[LoadPoint]] = {}
    for p in points:
        lines.setdefault(p.series, []).append(p)
    return lines


def _with_xy(points: Sequence[LoadPoint]) -> list[tuple[LoadPoint, tuple[float, float]]]:
    placed = []
    for p in points:
        x, y = p.total_tok_s, p.per_user_tok_s
        if x is not None and y is not None:
            placed.append((p, (x, y)))
    return placed


def frontier_summary(points: Sequence[SweepPoint], knob: str, swept: Sequence[str]) -> dict[str, Any]:
    """JSON-ready: each point (knob value, line, the figures plotted, whether on the frontier: None when it
    could not be placed), what each plot left out and why, and each line's knee."""
    loads, skipped = load_points(points, knob, swept)
    placed = _with_xy(loads)
    front = [placed[i][0] for i in pareto_front([xy for _, xy in placed])]
    left_out = [{"run": note} for note in skipped]
    rows = []
    for p in loads:
        x, y = p.total_tok_s, p.per_user_tok_s
        rows.append(
            {
                "value": p.value,
                "series": p.series,
                "total_output_tok_s": x,
                "per_user_output_tok_s": y,
                REQUEST_THROUGHPUT: p.metrics.get(REQUEST_THROUGHPUT),
                TTFT_P99: p.metrics.get(TTFT_P99),
                TPOT_P99: p.metrics.get(TPOT_P99),
                TPOT_MEAN: p.metrics.get(TPOT_MEAN),
                "on_frontier": None if x is None or y is None else any(p is f for f in front),
            }
        )
        unplaced = [name for name, v in ((TOTAL_TOK_S, x), (TPOT_MEAN, y)) if v is None]
        for plot, missing in (
            ("frontier", unplaced),  # a mean TPOT of 0 (no decode time) gives no speed either
            ("latency", [m for m in _LATENCY_NEEDS if m not in p.metrics]),
        ):
            if missing:
                left_out.append({"value": p.value, "series": p.series, "plot": plot, "missing": missing})
    knees = []
    for series, members in _series(loads).items():
        knee = find_knee(members)
        knees.append(
            {
                "series": series,
                "value": knee.point.value if knee and knee.point else None,
                TTFT_P99: knee.point.metrics[TTFT_P99] if knee and knee.point else None,
                "baseline_value": knee.baseline.value if knee else None,
                f"baseline_{TTFT_P99}": knee.baseline.metrics[TTFT_P99] if knee else None,
            }
        )
    return {
        "knob": knob,
        "definitions": DEFINITIONS,
        "points": rows,
        "left_out": left_out,
        "knees": knees,
    }


def _ms(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def knee_lines(summary: Mapping[str, Any]) -> list[str]:
    """One line per line of the sweep: where its knee is, or that there is none, with the figures."""
    knob = summary["knob"]
    lines = []
    for knee in summary["knees"]:
        where = f" [{knee['series']}]" if knee["series"] else ""
        if knee["baseline_value"] is None:
            lines.append(f"knee{where}: unknown (no run over {knob} has a TTFT p99)")
            continue
        base = f"{_ms(knee[f'baseline_{TTFT_P99}'])} ms at {knob}={knee['baseline_value']}"
        if knee["value"] is None:
            lines.append(
                f"knee{where}: none (TTFT p99 stays within {KNEE_FACTOR:g}x of its low-load value, {base})"
            )
        else:
            high = _ms(knee[TTFT_P99])
            lines.append(
                f"knee{where}: {knob}={knee['value']} (TTFT p99 {high} ms > {KNEE_FACTOR:g} x {base})"
            )
    return lines


def _log_if_wide(ax: Axes, values: Sequence[float]) -> None:
    """A log y scale when the values span more than 16x (overload multiplies TTFT by hundreds), its ticks
    plain numbers."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) >= 16 * min(positive):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())  # over a decade or more, labelled minors crowd


def _annotate(ax: Axes, text: str, xy: tuple[float, float], color: str = "black") -> None:
    ax.annotate(text, xy, xytext=(4, 4), textcoords="offset points", fontsize=SMALL_FONT, color=color)


def latency_vs_throughput_figure(points: Sequence[SweepPoint], knob: str, swept: Sequence[str]) -> Figure:
    """TTFT p99 and TPOT p99 against request throughput, a line per setting of the other swept params
    joining its points in knob order, each point named by its knob value. The panels are stacked, each
    the figure's full width, so that they read where MLflow's viewer fits the PNG to about 700-1000 px."""
    loads, _ = load_points(points, knob, swept)
    lines = _series(loads)
    fig = Figure(figsize=(FIGSIZE[0], 9.0), layout="constrained")
    axes = fig.subplots(2, 1, squeeze=False)[:, 0]
    knee_note = (
        f"\ndashed: {KNEE_FACTOR:g} x the TTFT p99 at the lowest {knob}; circled: the knee (first above)"
    )
    for ax, (metric, label) in zip(
        axes, ((TTFT_P99, "TTFT p99 (ms)"), (TPOT_P99, "TPOT p99 (ms)")), strict=True
    ):
        drawn: list[float] = []
        for series, members in lines.items():
            shown = [p for p in members if REQUEST_THROUGHPUT in p.metrics and metric in p.metrics]
            if not shown:
                continue
            xs = [p.metrics[REQUEST_THROUGHPUT] for p in shown]
            ys = [p.metrics[metric] for p in shown]
            [line] = ax.plot(xs, ys, marker="o", label=series or None)
            for p, x, y in zip(shown, xs, ys, strict=True):
                _annotate(ax, p.value, (x, y))
            drawn += ys
            knee = find_knee(members)
            if metric == TTFT_P99 and knee is not None:
                limit = KNEE_FACTOR * knee.baseline.metrics[TTFT_P99]
                ax.axhline(limit, color=line.get_color(), linestyle="--", linewidth=0.8)
                drawn.append(limit)
                if knee.point is not None and REQUEST_THROUGHPUT in knee.point.metrics:
                    at = (knee.point.metrics[REQUEST_THROUGHPUT], knee.point.metrics[TTFT_P99])
                    ax.plot(*at, marker="o", markersize=12, fillstyle="none", color=line.get_color())
        if not drawn:
            ax.text(0.5, 0.5, f"no run has {metric}", ha="center", va="center", transform=ax.transAxes)
        _log_if_wide(ax, drawn)
        ax.set_title(label + (knee_note if metric == TTFT_P99 else ""), fontsize=FONT, wrap=True)
        ax.set_xlabel("request throughput (req/s)", fontsize=FONT)
        ax.set_ylabel(label, fontsize=FONT)
        ax.grid(alpha=0.3)
        legible(ax)
    if len(lines) > 1:
        legend_below(fig, axes[0])
    # wrap: a long knob name (scheduler.max_concurrency) makes these titles wider than the figure.
    fig.suptitle(f"latency vs throughput over {knob}, points named by {knob}", fontsize=TITLE_FONT, wrap=True)
    return fig


def frontier_figure(points: Sequence[SweepPoint], knob: str, swept: Sequence[str]) -> Figure:
    """Every point (tokens/s per user against total output tokens/s; a colour per setting of the other
    swept params), the frontier as a line through its points, each point named by its knob value (grey off
    the frontier)."""
    loads, _ = load_points(points, knob, swept)
    placed = _with_xy(loads)
    front = sorted((placed[i] for i in pareto_front([xy for _, xy in placed])), key=lambda item: item[1])
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    lines = _series([p for p, _ in placed])
    for number, (series, members) in enumerate(lines.items()):
        xy = [(p.total_tok_s, p.per_user_tok_s) for p in members]
        color = f"C{number}" if len(lines) > 1 else "0.6"
        ax.scatter(*zip(*xy, strict=True), color=color, zorder=2, label=series or f"all points ({len(xy)})")
    if front:
        fx, fy = zip(*(xy for _, xy in front), strict=True)
        ax.plot(fx, fy, color="black", linewidth=1.2, zorder=1, label=f"Pareto frontier ({len(front)})")
        ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="black", zorder=3)
        on_front = [p for p, _ in front]
        for p, xy in placed:
            _annotate(ax, p.value, xy, "black" if any(p is f for f in on_front) else "0.5")
    else:
        ax.text(
            0.5, 0.5, f"no run has both {TOTAL_TOK_S} and {TPOT_MEAN}", ha="center", transform=ax.transAxes
        )
    missing = len(loads) - len(placed)
    ax.set_xlabel(f"total output throughput (tok/s, {TOTAL_TOK_S})", fontsize=FONT)
    ax.set_ylabel(f"tokens/s per user (1000 / {TPOT_MEAN})", fontsize=FONT)
    ax.grid(alpha=0.3)
    legible(ax)
    legend_below(fig, ax)
    if missing:
        ax.set_title(f"{missing} run(s) without both figures left out", fontsize=SMALL_FONT)
    title = f"per-user vs total tokens/s over {knob}, points named by {knob}"
    fig.suptitle(title, fontsize=TITLE_FONT, wrap=True)  # wrap: as wide as the figure with a long knob name
    return fig


def plot_frontier(points: Sequence[SweepPoint], knob: str, swept: Sequence[str], out_dir: Path) -> list[Path]:
    """``frontier_<knob>.png`` and ``latency_vs_throughput_<knob>.png`` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in (
        ("frontier", frontier_figure),
        ("latency_vs_throughput", latency_vs_throughput_figure),
    ):
        out = out_dir / f"{name}_{knob}.png"  # the knobs are file-safe names
        build(points, knob, swept).savefig(out, dpi=DPI)
        paths.append(out)
    return paths
