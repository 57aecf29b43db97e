"""The latency-throughput frontier of a sweep over a load knob: the Pareto subset, the knee, points that
lack a figure, and once end to end: a real sweep through the CLI into a fresh store, and the report on its
folder."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cli_helpers import assert_ok, describe, run_cli, run_tool
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from rosebench.tracking.frontier import (
    LOAD_KNOBS,
    find_knee,
    frontier_figure,
    frontier_summary,
    knee_lines,
    latency_vs_throughput_figure,
    load_knobs,
    load_points,
    pareto_front,
)
from rosebench.tracking.plots import SweepPoint
from rosebench.tracking.table import RunRow, Table

if TYPE_CHECKING:
    from mlflow import MlflowClient

RATE = "scheduler.request_rate"


def dominates(q: tuple[float, float], p: tuple[float, float]) -> bool:
    """q is at least as good on both axes (both maximized) and better on one."""
    return q[0] >= p[0] and q[1] >= p[1] and q != p


def point(
    value: str,
    ttft: float | None = None,
    total: float | None = None,
    tpot_mean: float | None = None,
    req_s: float | None = None,
    tpot_p99: float | None = None,
    **params: str,
) -> SweepPoint:
    figures = {
        "ttft_ms_p99": ttft,
        "throughput_completion_tok_s": total,
        "tpot_ms_mean": tpot_mean,
        "request_throughput_req_s": req_s,
        "tpot_ms_p99": tpot_p99,
    }
    return SweepPoint({RATE: value, **params}, {k: v for k, v in figures.items() if v is not None})


def knee_value(points: Sequence[SweepPoint]) -> str | None:
    knee = find_knee(load_points(points, RATE, [RATE])[0])
    assert knee is not None
    return knee.point.value if knee.point else None


# -- pareto_front ---------------------------------------------------------------------------------------


def test_pareto_front_by_hand() -> None:
    xy = [(1.0, 10.0), (2.0, 9.0), (3.0, 3.0), (2.0, 5.0), (0.5, 10.0), (3.0, 3.0), (1.0, 10.0)]
    # (2, 5) loses to (2, 9); (0.5, 10) to (1, 10); equal points dominate neither each other: both stay.
    assert pareto_front(xy) == [0, 1, 2, 5, 6]
    assert pareto_front([]) == []
    assert pareto_front([(4.0, 4.0)]) == [0]
    assert pareto_front([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]) == [2]  # one point beats all: alone


coordinates = st.tuples(st.integers(0, 6).map(float), st.integers(0, 6).map(float))  # small: ties happen


@given(st.lists(coordinates, max_size=25))
def test_pareto_front_is_the_non_dominated_subset(xy: list[tuple[float, float]]) -> None:
    front = pareto_front(xy)
    assert front == sorted(set(front))  # indices, in input order, each once
    on_front = [xy[i] for i in front]
    assert not any(dominates(q, p) for p in on_front for q in xy)  # nothing beats a front point
    for i, p in enumerate(xy):
        if i not in front:
            assert any(dominates(q, p) for q in on_front), p  # a point off it loses to one on it
    assert bool(front) == bool(xy)


# -- the knee -------------------------------------------------------------------------------------------


def test_knee_is_the_first_point_past_twice_the_lowest_loads_ttft() -> None:
    # In knob order, whatever the order of the runs; 4 is the first past 2 x 10 (8 is past it too).
    points = [point("8", 50), point("1", 10), point("4", 21), point("2", 15)]
    assert knee_value(points) == "4"
    assert knee_value([point("1", 10), point("2", 20), point("4", 19)]) is None  # exactly 2x: not past it
    # The baseline is the lowest load even when a higher load is faster (a cold first request).
    assert knee_value([point("1", 30), point("2", 5), point("4", 59), point("8", 61)]) == "8"
    assert knee_value([point("inf", 100), point("16", 40), point("1", 20)]) == "inf"  # no limit: highest
    assert knee_value([point("1", 10)]) is None


def test_knee_baseline_skips_a_run_without_ttft_and_none_without_any() -> None:
    knee = find_knee(load_points([point("1"), point("2", 10), point("4", 25)], RATE, [RATE])[0])
    assert knee is not None and knee.baseline.value == "2" and knee.point is not None
    assert knee.point.value == "4"
    assert find_knee(load_points([point("1"), point("2")], RATE, [RATE])[0]) is None


def test_knee_lines_say_where_or_that_there_is_none() -> None:
    def summary(*points: SweepPoint, swept: Sequence[str] = (RATE,)) -> dict:
        return frontier_summary(points, RATE, swept)

    [line] = knee_lines(summary(point("1", 95), point("16", 412), point("4", 150)))
    assert line == f"knee: {RATE}=16 (TTFT p99 412 ms > 2 x 95 ms at {RATE}=1)"
    [line] = knee_lines(summary(point("1", 95), point("16", 180)))
    assert line == f"knee: none (TTFT p99 stays within 2x of its low-load value, 95 ms at {RATE}=1)"
    [line] = knee_lines(summary(point("1"), point("2")))
    assert line == f"knee: unknown (no run over {RATE} has a TTFT p99)"
    # One knee per setting of the other swept params.
    lines = knee_lines(
        summary(
            point("1", 10, b="1"),
            point("2", 30, b="1"),
            point("1", 10, b="2"),
            point("2", 15, b="2"),
            swept=(RATE, "b"),
        )
    )
    assert lines == [
        f"knee [b=1]: {RATE}=2 (TTFT p99 30 ms > 2 x 10 ms at {RATE}=1)",
        f"knee [b=2]: none (TTFT p99 stays within 2x of its low-load value, 10 ms at {RATE}=1)",
    ]


# -- points that lack a figure, and the summary ---------------------------------------------------------


def test_a_point_missing_a_figure_is_left_out_of_that_plot_and_named() -> None:
    points = [
        point("1", ttft=10, total=100, tpot_mean=2, req_s=1, tpot_p99=3),
        point("2", ttft=12, total=200, tpot_mean=4, req_s=2),  # no TPOT p99
        point("4", ttft=30, total=400, req_s=4, tpot_p99=6),  # no mean TPOT: no per-user speed
        point("8", ttft=90, total=150, tpot_mean=8, req_s=3, tpot_p99=9),  # beaten by "2"
    ]
    summary = frontier_summary(points, RATE, [RATE])
    rows = {row["value"]: row for row in summary["points"]}
    assert list(rows) == ["1", "2", "4", "8"]
    assert rows["4"]["per_user_output_tok_s"] is None and rows["4"]["on_frontier"] is None
    assert {v: r["on_frontier"] for v, r in rows.items() if v != "4"} == {"1": True, "2": True, "8": False}
    assert rows["1"]["per_user_output_tok_s"] == 500.0 and rows["2"]["total_output_tok_s"] == 200
    assert summary["left_out"] == [
        {"value": "2", "series": "", "plot": "latency", "missing": ["tpot_ms_p99"]},
        {"value": "4", "series": "", "plot": "frontier", "missing": ["tpot_ms_mean"]},
    ]
    assert summary["knees"] == [
        {"series": "", "value": "4", "ttft_ms_p99": 30, "baseline_value": "1", "baseline_ttft_ms_p99": 10}
    ]
    json.dumps(summary, allow_nan=False)  # plain JSON, no Infinity

    frontier = frontier_figure(points, RATE, [RATE])
    FigureCanvasAgg(frontier).draw()
    [ax] = frontier.axes
    every, ringed = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(map(tuple, every.get_offsets().tolist())) == [(100, 500), (150, 125), (200, 250)]
    assert sorted(map(tuple, ringed.get_offsets().tolist())) == [(100, 500), (200, 250)]
    [line] = ax.lines
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == [(100, 500), (200, 250)]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "8"]  # every placed point named

    latency = latency_vs_throughput_figure(points, RATE, [RATE])
    ttft_ax, tpot_ax = latency.axes
    assert list(ttft_ax.lines[0].get_ydata()) == [10, 12, 30, 90]
    assert list(tpot_ax.lines[0].get_xdata()) == [1, 4, 3] and list(tpot_ax.lines[0].get_ydata()) == [3, 6, 9]
    assert [t.get_text() for t in tpot_ax.texts] == ["1", "4", "8"]


def test_load_points_read_the_knob() -> None:
    points = [point("16"), point("None"), point("fast"), SweepPoint({}, {})]
    loads, skipped = load_points(points, RATE, [RATE])
    assert [(p.value, p.load) for p in loads] == [("16", 16.0), ("None", math.inf)]  # unset: no limit
    assert len(skipped) == 2
    assert load_knobs(["max_new_tokens", "num_requests", RATE]) == ["num_requests", RATE]
    assert set(LOAD_KNOBS) >= {RATE, "scheduler.max_concurrency", "num_requests", "scheduler.max_batch_size"}


def row(params: dict[str, str], metrics: dict[str, float], sweep: str = "s") -> RunRow:
    name = " ".join(f"{k}={v}" for k, v in params.items())
    return RunRow(name, "FINISHED", params, list(params), metrics, {}, sweep, 0.0, float(len(name)))


def test_table_plots_a_frontier_only_for_a_load_knob(tmp_path: Path) -> None:
    figures = {"ttft_ms_p99": 5.0, "throughput_completion_tok_s": 9.0, "tpot_ms_mean": 1.0}
    load = Table.of([row({"num_requests": n}, figures) for n in ("1", "2")])
    names = sorted(p.name for p in load.plots(tmp_path / "load"))
    assert names == [  # a PNG per plotted metric the runs have: here throughput alone
        "frontier_num_requests.png",
        "latency_vs_throughput_num_requests.png",
        "throughput_completion_tok_s_vs_num_requests.png",
    ]
    assert list(load.frontiers()) == ["num_requests"]
    other = Table.of([row({"max_new_tokens": n}, figures) for n in ("1", "2")])
    assert [p.name for p in other.plots(tmp_path / "other")] == [
        "throughput_completion_tok_s_vs_max_new_tokens.png"
    ]
    assert other.frontiers() == {}


# -- end to end: a real sweep ---------------------------------------------------------------------------


def artifact_json(client: MlflowClient, run_id: str, path: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


@pytest.mark.slow
def test_a_real_rate_sweep_gets_its_frontier_on_the_parent_and_in_the_report(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rates = ("4", "16", "64")
    proc = run_cli(
        tmp_path,
        "--multirun",
        "engine=tiny",
        "mode=online",
        f"{RATE}={','.join(rates)}",
        "num_requests=8",
        "max_new_tokens=8",
        "warmup=0",
        "repeat=1",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert_ok(proc)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rosebench")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert len(children) == 3 and parent.info.status == "FINISHED"
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"plots/frontier_{RATE}.png", f"plots/latency_vs_throughput_{RATE}.png"} <= plots

    summary = artifact_json(client, parent.info.run_id, "frontier.json")[RATE]
    # Its points are the sweep's points: one per child, with the child's own figures.
    expected = {}
    for child in children:
        figures = artifact_json(client, child.info.run_id, "figures.json")
        means = {r[0]: dict(zip(figures["columns"], r, strict=True))["mean"] for r in figures["data"]}
        metrics = child.data.metrics
        expected[child.data.params[RATE]] = {
            "total_output_tok_s": metrics["throughput_completion_tok_s"],
            "per_user_output_tok_s": 1000 / means["tpot_ms_mean"],
            "request_throughput_req_s": metrics["request_throughput_req_s"],
            "ttft_ms_p99": metrics["ttft_ms_p99"],
            "tpot_ms_p99": metrics["tpot_ms_p99"],
        }
    assert sorted(float(v) for v in expected) == [float(r) for r in rates]
    got = {p["value"]: {k: p[k] for k in expected[p["value"]]} for p in summary["points"]}
    assert got == expected and len(summary["points"]) == 3 and summary["left_out"] == []
    # Its frontier flags are the non-dominated subset, worked out here from the children's figures.
    xy = {v: (e["total_output_tok_s"], e["per_user_output_tok_s"]) for v, e in expected.items()}
    front = {v for v, p in xy.items() if not any(dominates(q, p) for q in xy.values())}
    assert {p["value"] for p in summary["points"] if p["on_frontier"]} == front
    assert all(p["on_frontier"] is not None for p in summary["points"])
    # And its knee is the rule's, from the children's TTFT p99.
    by_rate = sorted(expected.items(), key=lambda item: float(item[0]))
    low = by_rate[0][1]["ttft_ms_p99"]
    knee = next((v for v, e in by_rate[1:] if e["ttft_ms_p99"] > 2 * low), None)
    [logged_knee] = summary["knees"]
    assert logged_knee["value"] == knee and logged_knee["baseline_value"] == by_rate[0][0]

    report = run_tool(tmp_path, "report", "--sweep", str(tmp_path / "sweep"), "--plots", str(tmp_path / "p"))
    assert report.returncode == 0, describe(report)
    assert len(report.stdout.splitlines()) == 4  # the table alone: header and three runs
    assert report.stdout.splitlines()[0].startswith("run ")
    for name in (f"frontier_{RATE}.png", f"latency_vs_throughput_{RATE}.png"):
        assert (tmp_path / "p" / name).stat().st_size > 10_000, name
    knee_line = next(line for line in report.stderr.splitlines() if line.startswith("knee"))
    assert knee_line.startswith(f"knee: {RATE}={knee} (" if knee else "knee: none ("), knee_line


def test_report_prints_each_load_sweeps_knee_named_by_its_sweep() -> None:
    from rosebench.report import _knee_lines

    def rows(key: str, ttfts: dict[str, float], sweep: str) -> list[RunRow]:
        return [row({key: v}, {"ttft_ms_p99": t}, sweep) for v, t in ttfts.items()]

    load = rows("num_requests", {"1": 10, "4": 25}, "sweep a")
    assert _knee_lines(Table.of(load)) == [
        "knee: num_requests=4 (TTFT p99 25 ms > 2 x 10 ms at num_requests=1)"
    ]
    both = Table.of([*load, *rows("max_new_tokens", {"1": 10, "4": 99}, "sweep b")])
    assert _knee_lines(both) == [
        "sweep a: knee: num_requests=4 (TTFT p99 25 ms > 2 x 10 ms at num_requests=1)"
    ]
    assert _knee_lines(Table.of(rows("max_new_tokens", {"1": 10, "4": 99}, "b"))) == []
