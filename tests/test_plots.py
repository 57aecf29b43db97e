"""The sweep plots as MLflow's artifact viewer shows them (fitted to a pane about 1000 px wide, about 680 px
with its assistant panel open): a PNG per metric, 1000 px wide, every text at least MIN_POINTS, legends
off the data; and repeats (``trial``) drawn as points with their mean and spread, never as a line through
them."""

from __future__ import annotations

import struct
from pathlib import Path
from statistics import fmean, pstdev

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from rosebench.capacity import CapacityReport, Probe
from rosebench.tracking.capacity_log import capacity_figure
from rosebench.tracking.frontier import frontier_figure, latency_vs_throughput_figure
from rosebench.tracking.plots import PLOTTED_METRICS, TRIAL, SweepPoint, metric_vs_param_figure, plot_sweep

MIN_POINTS = 12  # 17 px at dpi 100; 11 px once the viewer shrinks a 1000 px figure to 680 px
WIDTH_PX = 1000
THROUGHPUT = "throughput_completion_tok_s"
KNOB = "num_requests"
# Each trial's figure at each knob value, far enough apart that a line through them would zigzag; at 16 one
# lies beyond its error bar (and the autoscaled limits of the means and bars alone).
TRIAL_FIGURES = {"1": (10.0, 14.0, 12.5), "4": (30.0, 24.0, 33.0), "16": (50.0, 50.0, 80.0)}


def figures(value: float) -> dict[str, float]:
    """Every metric the plots and the frontier read, derived from one number (only the drawing is checked)."""
    return {
        **{metric: value * (i + 1) for i, metric in enumerate(PLOTTED_METRICS)},
        "ttft_ms_p99": 2 * value,
        "tpot_ms_p99": 3 * value,
        "tpot_ms_mean": 1 + value / 10,
    }


def knob_sweep() -> list[SweepPoint]:
    return [SweepPoint({KNOB: n}, figures(float(n)), {THROUGHPUT: 1.5}) for n in ("1", "4", "16")]


def knob_and_trial_sweep() -> list[SweepPoint]:
    return [
        SweepPoint({KNOB: n, TRIAL: str(t)}, {**figures(float(n)), THROUGHPUT: value}, {THROUGHPUT: 0.5})
        for n, values in TRIAL_FIGURES.items()
        for t, value in enumerate(values)
    ]


def trial_sweep() -> list[SweepPoint]:
    return [
        SweepPoint({TRIAL: str(t)}, {**figures(4.0), THROUGHPUT: value}, {THROUGHPUT: 0.25 * (t + 1)})
        for t, value in enumerate(TRIAL_FIGURES["4"])
    ]


def drawn(fig: Figure) -> Figure:
    FigureCanvasAgg(fig).draw()
    return fig


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def assert_readable(fig: Figure) -> None:
    """1000 px wide at the figures' dpi; every text at least MIN_POINTS and inside the image; legends clear
    of every axes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    width, height = fig.get_size_inches()
    assert width * fig.dpi == pytest.approx(WIDTH_PX)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    for text in texts:
        assert text.get_fontsize() >= MIN_POINTS, (text.get_text(), text.get_fontsize())
    # Everything drawn (titles, labels, the ticks in view, legends) lies inside the image: none cut off.
    drawn_box = fig.get_tightbbox(canvas.get_renderer())
    margin = 0.01  # inches
    assert drawn_box.x0 >= -margin and drawn_box.y0 >= -margin, drawn_box
    assert drawn_box.x1 <= width + margin and drawn_box.y1 <= height + margin, drawn_box
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes), "a legend on the data"


def connecting_lines(fig: Figure) -> list[Line2D]:
    """Lines drawn with a line style through more than one data point (not markers, not the axes'
    reference lines)."""
    return [
        line
        for ax in fig.axes
        for line in ax.get_lines()
        if line.get_linestyle() not in ("None", "", " ") and len(line.get_xydata()) > 1
    ]


# -- files -----------------------------------------------------------------------------------------------


def test_plot_sweep_writes_one_1000x600_png_per_metric(tmp_path: Path) -> None:
    paths = plot_sweep(knob_sweep(), [KNOB], tmp_path)
    assert [p.name for p in paths] == [f"{metric}_vs_{KNOB}.png" for metric in PLOTTED_METRICS]
    assert {png_size(p) for p in paths} == {(WIDTH_PX, 600)}


def test_plot_sweep_is_deterministic(tmp_path: Path) -> None:
    first = plot_sweep(knob_and_trial_sweep(), [KNOB, TRIAL], tmp_path / "a")
    second = plot_sweep(knob_and_trial_sweep(), [KNOB, TRIAL], tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_a_metric_no_run_has_gets_no_png(tmp_path: Path) -> None:
    points = [SweepPoint({KNOB: n}, {THROUGHPUT: float(n)}) for n in ("1", "2")]
    assert [p.name for p in plot_sweep(points, [KNOB], tmp_path)] == [f"{THROUGHPUT}_vs_{KNOB}.png"]


def test_trial_beside_a_knob_gets_no_plots_of_its_own_and_alone_gets_them(tmp_path: Path) -> None:
    both = plot_sweep(knob_and_trial_sweep(), [KNOB, TRIAL], tmp_path / "both")
    assert [p.name for p in both] == [f"{metric}_vs_{KNOB}.png" for metric in PLOTTED_METRICS]
    alone = plot_sweep(trial_sweep(), [TRIAL], tmp_path / "alone")
    assert [p.name for p in alone] == [f"{metric}_vs_{TRIAL}.png" for metric in PLOTTED_METRICS]


# -- legible at the viewer's width -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "param", "swept"),
    [
        (knob_sweep(), KNOB, [KNOB]),
        (knob_and_trial_sweep(), KNOB, [KNOB, TRIAL]),
        (trial_sweep(), TRIAL, [TRIAL]),
        (
            [
                SweepPoint({KNOB: n, "scheduler.max_batch_size": b}, figures(float(n) * int(b)))
                for n in ("1", "4", "16")
                for b in ("1", "2", "4", "8", "16")
            ],
            KNOB,
            [KNOB, "scheduler.max_batch_size"],
        ),
        (
            [
                SweepPoint(
                    {KNOB: n, "scheduler.max_batch_size": b, "scheduler.max_concurrency": c}, figures(1.0)
                )
                for n in ("1", "4")
                for b in ("1", "16")
                for c in ("8", "null")
            ],
            KNOB,
            [KNOB, "scheduler.max_batch_size", "scheduler.max_concurrency"],  # long legend entries
        ),
    ],
    ids=["knob", "knob-and-trial", "trial", "two-knobs", "three-knobs"],
)
def test_metric_figures_read_at_1000_px(points: list[SweepPoint], param: str, swept: list[str]) -> None:
    for metric in PLOTTED_METRICS:
        assert_readable(metric_vs_param_figure(points, metric, param, swept))


def load_sweep(knob: str, series: tuple[str, ...] = ("",)) -> list[SweepPoint]:
    return [
        SweepPoint({knob: n, **({"max_new_tokens": s} if s else {})}, figures(float(n) + len(s)))
        for s in series
        for n in ("1", "4", "16", "64")
    ]


@pytest.mark.parametrize("series", [("",), ("8", "64", "256")], ids=["one-line", "three-lines"])
@pytest.mark.parametrize("knob", [KNOB, "scheduler.max_concurrency"])  # the longest name: the longest titles
def test_frontier_figures_read_at_1000_px(knob: str, series: tuple[str, ...]) -> None:
    swept = [knob, "max_new_tokens"] if series != ("",) else [knob]
    for build in (frontier_figure, latency_vs_throughput_figure):
        assert_readable(build(load_sweep(knob, series), knob, swept))


@pytest.mark.parametrize(
    ("knob", "upper", "stop_reason"),
    [
        ("scheduler.request_rate", 4.0, "the budget of 12 runs is spent"),
        (
            "scheduler.max_concurrency",
            None,
            "the target is met up to hydra.sweeper.max_value=1024",
        ),  # longest
    ],
)
def test_capacity_figure_reads_at_1000_px(knob: str, upper: float | None, stop_reason: str) -> None:
    probes = [
        Probe(2.0, 1, 40, 40, (0.91, 1.0), "pass"),
        Probe(8.0, 3, 100, 120, (0.76, 0.89), "fail"),
        Probe(4.0, 3, 118, 120, (0.94, 0.99), "unsure"),
    ]
    report = CapacityReport(
        knob=knob,
        target=0.999,
        slo={"ttft_ms": 200.0},
        settings={},
        probes=probes,
        capacity=1024.0,
        capacity_upper=upper,
        stop_reason=stop_reason,
    )
    assert_readable(capacity_figure(report))


# -- repeats are points, never a line --------------------------------------------------------------------


def test_a_trial_sweep_draws_each_trial_as_a_point_with_their_mean_and_spread_and_no_line() -> None:
    fig = drawn(metric_vs_param_figure(trial_sweep(), THROUGHPUT, TRIAL, [TRIAL]))
    [ax] = fig.axes
    values = TRIAL_FIGURES["4"]
    trials = ax.transData.transform([(t, v) for t, v in enumerate(values)])
    for line in ax.get_lines():
        if line.get_linestyle() in ("None", "", " "):
            continue
        through = line.get_transform().transform(line.get_xydata())
        hits = sum(any(np.allclose(p, q, atol=0.5) for q in through) for p in trials)
        assert hits <= 1, f"a line through {hits} trials"
    [bars] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars.lines[0].get_linestyle() == "None"  # the trials' points, unjoined
    assert [tuple(xy) for xy in bars.lines[0].get_xydata()] == list(enumerate(values))
    halves = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.lines[2][0].get_segments()]
    assert halves == pytest.approx([0.25, 0.5, 0.75])  # each trial's own passes
    [mean] = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(mean.get_ydata()) == pytest.approx([fmean(values)] * 2)
    [band] = ax.patches  # a rectangle across the axes, its y in data units
    low, high = band.get_y(), band.get_y() + band.get_height()
    assert (low, high) == pytest.approx((fmean(values) - pstdev(values), fmean(values) + pstdev(values)))


def test_a_knob_swept_with_trials_draws_each_values_mean_and_spread_not_a_zigzag() -> None:
    fig = drawn(metric_vs_param_figure(knob_and_trial_sweep(), THROUGHPUT, KNOB, [KNOB, TRIAL]))
    [ax] = fig.axes
    [line] = connecting_lines(fig)  # one line, not one per trial nor one through the trials
    xs, ys = line.get_xdata(), line.get_ydata()
    assert list(xs) == [1, 4, 16]  # each value once: no zigzag through its repeats
    assert list(ys) == pytest.approx([fmean(v) for v in TRIAL_FIGURES.values()])
    [bars] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    halves = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.lines[2][0].get_segments()]
    assert halves == pytest.approx([pstdev(v) for v in TRIAL_FIGURES.values()])  # over the trials
    dots = [line for line in ax.get_lines() if line.get_linestyle() == "None" and line.get_marker() == "o"]
    shown = sorted((float(d.get_xdata()[0]), float(d.get_ydata()[0])) for d in dots)
    expected = sorted((float(n), v) for n, values in TRIAL_FIGURES.items() for v in values)
    assert shown == expected  # every trial, as a point
    low, high = ax.get_ylim()
    assert all(low <= y <= high for _, y in shown)  # none outside the axes
    side_by_side = [d.get_transform().transform(d.get_xydata())[0][0] for d in dots if d.get_xdata()[0] == 16]
    assert len(set(np.round(side_by_side))) == 3  # repeats with close figures stay countable
