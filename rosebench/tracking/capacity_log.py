"""A capacity search's report on its sweep's parent run: the bracket as metrics, the probes as a metric
history (step = probe order), a table and a plot, and capacity.json itself (what rosebench.compare reads)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric

from rosebench.capacity import CAPACITY_FILE, CapacityReport
from rosebench.tracking.plots import DPI, FIGSIZE, FONT, SMALL_FONT, TITLE_FONT, legend_below, legible

CAPACITY_PROBES_TABLE = "capacity_probes.json"
_VERDICT_COLOURS = {"pass": "tab:green", "fail": "tab:red", "unsure": "tab:orange", "pending": "tab:gray"}


def log_capacity(client: MlflowClient, parent_run_id: str, sweep_dir: Path) -> CapacityReport | None:
    """Log the sweep's capacity.json on its parent, if the sweep was a capacity search; returns the report."""
    path = sweep_dir / CAPACITY_FILE
    if not path.is_file():
        return None
    report = CapacityReport.load(path)
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, 0) for name, value in report.metrics().items()]
    for step, probe in enumerate(report.probes, start=1):
        metrics.append(Metric("probe_value", probe.value, now, step))
        if probe.attainment is not None:
            metrics.append(Metric("probe_attainment", probe.attainment, now, step))
    client.log_batch(parent_run_id, metrics=metrics)
    client.set_tag(parent_run_id, "capacity", report.bracket_text())
    client.set_tag(parent_run_id, "capacity_stop_reason", report.stop_reason)
    client.log_artifact(parent_run_id, str(path))
    client.log_table(parent_run_id, data=_probe_columns(report), artifact_file=CAPACITY_PROBES_TABLE)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / f"capacity_{report.knob}.png"
        capacity_figure(report).savefig(png, dpi=DPI)
        client.log_artifact(parent_run_id, str(png), artifact_path="plots")
    return report


def _probe_columns(report: CapacityReport) -> dict[str, list[object]]:
    probes = report.probes
    return {
        "probe": list(range(1, len(probes) + 1)),
        report.knob: [p.value for p in probes],
        "trials": [p.trials for p in probes],
        "met": [p.met for p in probes],
        "requests": [p.requests for p in probes],
        "attainment": [p.attainment for p in probes],
        "interval_low": [p.interval[0] for p in probes],
        "interval_high": [p.interval[1] for p in probes],
        "verdict": [p.verdict for p in probes],
        "contended_runs": [p.contended_runs for p in probes],
    }


def capacity_figure(report: CapacityReport) -> Figure:
    """Each probe's pooled attainment with its interval against the knob, coloured by verdict and numbered
    in the order it ran; the target as a line, the bracket shaded; the legend below the axes, off the data."""
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    for number, probe in enumerate(report.probes, start=1):
        if probe.attainment is None:
            continue
        low, high = probe.interval
        colour = _VERDICT_COLOURS.get(probe.verdict, "tab:gray")
        errors = [[max(0.0, probe.attainment - low)], [max(0.0, high - probe.attainment)]]  # rounding
        ax.errorbar([probe.value], [probe.attainment], yerr=errors, fmt="o", color=colour, capsize=4)
        ax.annotate(
            str(number),
            (probe.value, probe.attainment),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=SMALL_FONT,
        )
    ax.axhline(report.target, color="black", linestyle="--", linewidth=1, label=f"target {report.target:g}")
    if report.capacity is not None and report.capacity_upper is not None:
        ax.axvspan(
            report.capacity, report.capacity_upper, color="tab:blue", alpha=0.15, label="capacity bracket"
        )
    values = [p.value for p in report.probes]
    if values and min(values) > 0 and max(values) >= 8 * min(values):
        ax.set_xscale("log", base=2)
    for verdict, colour in _VERDICT_COLOURS.items():
        if any(p.verdict == verdict for p in report.probes):
            ax.plot([], [], "o", color=colour, label=verdict)
    ax.set_xlabel(report.knob, fontsize=FONT)
    ax.set_ylabel("SLO attainment (pooled over trials)", fontsize=FONT)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    legible(ax)
    legend_below(fig, ax)
    ax.set_title(f"stopped: {report.stop_reason}", fontsize=SMALL_FONT)
    fig.suptitle(
        f"capacity: {report.bracket_text()}", fontsize=TITLE_FONT, wrap=True
    )  # wider than the figure
    return fig
