"""Runs as a table: their swept params and headline metrics, from MLflow runs or run folders, as text,
CSV or Markdown, with plots. Used by sweep parent runs and by ``rosebench.report``."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rosebench.overrides import override_values
from rosebench.tracking.frontier import frontier_summary, load_knobs, plot_frontier
from rosebench.tracking.mlflow_log import FIGURES_TABLE, PROFILE_PREFIX, rounded
from rosebench.tracking.plots import PLOTTED_METRICS, SweepPoint, plot_sweep
from rosebench.tracking.run_folder import config_params, read_run

SWEEP_PARENT_TAG = "rosebench_sweep_parent"  # set on sweep parent runs


@dataclass
class RunRow:
    """One run: its name, status, params (config plus Hydra overrides), metrics and their spread over the
    timed passes (standard deviation), and the sweep it belongs to ("" for a single run)."""

    name: str
    status: str
    params: dict[str, str]
    override_keys: list[str]
    metrics: dict[str, float]
    spread: dict[str, float]
    sweep: str
    started: float  # epoch seconds; orders sweeps
    job_num: float  # a sweep's jobs in launch order; inf for a single run


def _with_overrides(params: dict[str, str], overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Params and the keys set by overrides: resolved config values win; overrides add what the config
    does not hold (config group choices)."""
    from_overrides = override_values(overrides)
    return {**from_overrides, **params}, list(from_overrides)


def row_from_run(run: Run, client: MlflowClient | None = None, sweeps: Mapping[str, str] = {}) -> RunRow:
    """A row from an MLflow run logged by rosebench.tracking; with `client`, the spread, and the figures
    beyond the headline ones (the frontier's mean TPOT), come from its figures table, so that the row holds
    what a row from the run's folder holds. `sweeps` names parent runs by id."""
    tags = run.data.tags
    parent = tags.get(MLFLOW_PARENT_RUN_ID)
    means, spread = _logged_figures(client, run.info.run_id) if client is not None else ({}, {})
    return RunRow(
        run.info.run_name or run.info.run_id,
        run.info.status,
        *_with_overrides(dict(run.data.params), json.loads(tags.get("hydra_overrides", "[]"))),
        metrics={**means, **run.data.metrics},
        spread=spread,
        sweep=sweeps.get(parent, parent) if parent else "",
        started=(run.info.start_time or 0) / 1000,
        job_num=float(tags["hydra_job_num"]) if "hydra_job_num" in tags else math.inf,
    )


def _logged_figures(client: MlflowClient, run_id: str) -> tuple[dict[str, float], dict[str, float]]:
    """The means (the profile's left out, as results.json's metrics leave them out) and standard deviations
    in the run's figures table; none when it has no table (older runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table = json.loads(Path(client.download_artifacts(run_id, FIGURES_TABLE, tmp)).read_text())
        except (OSError, ValueError, MlflowException):
            return {}, {}
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    means = {
        row["metric"]: float(row["mean"])
        for row in rows
        if isinstance(row.get("mean"), (int, float)) and not row["metric"].startswith(PROFILE_PREFIX)
    }
    return means, {row["metric"]: row["std"] for row in rows if isinstance(row.get("std"), (int, float))}


def row_from_folder(run_dir: Path) -> RunRow:
    """A row from a run folder's results.json (no MLflow involved), its figures rounded as MLflow holds
    them, so that a report reads the same from the folder and from the store."""
    results = read_run(run_dir)
    run = results.run
    started = datetime.fromisoformat(run.started_at).timestamp() if run.started_at else 0.0
    return RunRow(
        run.name,
        results.status,
        *_with_overrides(config_params(results.config), run.overrides),
        metrics={k: rounded(float(v)) for k, v in results.metrics.items() if isinstance(v, (int, float))},
        spread={k: float(v) for k, v in results.metrics_std.items() if isinstance(v, (int, float))},
        sweep=run.sweep_dir or "",
        started=started,
        job_num=math.inf if run.job_num is None else float(run.job_num),
    )


def in_sweep_order(rows: Iterable[RunRow]) -> list[RunRow]:
    """Sweeps one after another (in the order they started), each sweep's jobs in launch order; single
    runs take their place by start time."""
    rows = list(rows)
    first_start: dict[str, float] = {}
    for row in rows:
        group = row.sweep or row.name
        first_start[group] = min(first_start.get(group, math.inf), row.started)
    return sorted(rows, key=lambda r: (first_start[r.sweep or r.name], r.sweep, r.job_num, r.started, r.name))


def varying_params(rows: Sequence[RunRow]) -> list[str]:
    """Params whose values differ between the runs of one sweep; keys set by overrides first, in
    command-line order. (What differs from one sweep to the next is in the sweeps' names.)

    Runs that lack a param (one killed before logging it) do not make it differ.
    """
    keys = dict.fromkeys(k for row in rows for k in row.override_keys)
    keys.update(dict.fromkeys(k for row in rows for k in sorted(row.params)))
    groups = sweeps(rows).values()
    return [
        k for k in keys if any(len({r.params[k] for r in group if k in r.params}) > 1 for group in groups)
    ]


def sweeps(rows: Iterable[RunRow]) -> dict[str, list[RunRow]]:
    """The rows of each sweep, by sweep; single runs each on their own."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        groups.setdefault(row.sweep or row.name, []).append(row)
    return groups


@dataclass
class Table:
    """Runs as a table: run name, swept params, headline metrics, status."""

    swept: list[str]
    rows: list[RunRow]

    @classmethod
    def of(cls, rows: Iterable[RunRow]) -> Table:
        ordered = in_sweep_order(rows)
        return cls(varying_params(ordered), ordered)

    @property
    def grouped(self) -> bool:
        """Runs of more than one sweep (or a sweep and single runs): a column says which."""
        return len({row.sweep for row in self.rows}) > 1

    @property
    def header(self) -> list[str]:
        return [*(["sweep"] if self.grouped else []), "run", *self.swept, *PLOTTED_METRICS, "status"]

    @property
    def metric_columns(self) -> range:
        start = len(self.header) - 1 - len(PLOTTED_METRICS)
        return range(start, start + len(PLOTTED_METRICS))

    def cells(self, row: RunRow) -> list[str | float | None]:
        metrics: list[str | float | None] = [row.metrics.get(m) for m in PLOTTED_METRICS]
        named = [*([row.sweep] if self.grouped else []), row.name]
        return [*named, *(row.params.get(k, "") for k in self.swept), *metrics, row.status]

    def columns(self) -> dict[str, list[str | float | None]]:
        """Column name -> values, the shape `MlflowClient.log_table` takes."""
        return {name: [self.cells(row)[i] for row in self.rows] for i, name in enumerate(self.header)}

    def points(self) -> list[SweepPoint]:
        return [SweepPoint(row.params, row.metrics, row.spread) for row in self.rows]

    def plots(self, out_dir: Path) -> list[Path]:
        """Metric-vs-param PNGs, and a sweep over a load knob's frontier and latency-vs-throughput PNGs; for
        runs of several sweeps, one folder per sweep of more than one run."""
        if not self.grouped:
            paths = plot_sweep(self.points(), self._plotted(), out_dir)
            for knob in load_knobs(self._plotted()):
                paths += plot_frontier(self.points(), knob, self._plotted(), out_dir)
            return paths
        paths = []
        for number, rows in enumerate(sweeps(self.rows).values(), start=1):
            if len(rows) > 1:
                table = Table.of(rows)
                paths += table.plots(out_dir / f"sweep{number}")
        return paths

    def frontiers(self) -> dict[str, dict[str, Any]]:
        """Each swept load knob's frontier summary (``frontier.json``); none for runs of several sweeps,
        whose points are no one frontier (see `sweep_tables`)."""
        if self.grouped:
            return {}
        plotted = self._plotted()
        return {knob: frontier_summary(self.points(), knob, plotted) for knob in load_knobs(plotted)}

    def sweep_tables(self) -> dict[str, Table]:
        """The table of each sweep of more than one run, by sweep; this table alone when it is one sweep."""
        if not self.grouped:
            return {self.rows[0].sweep if self.rows else "": self}
        return {name: Table.of(rows) for name, rows in sweeps(self.rows).items() if len(rows) > 1}

    def _plotted(self) -> list[str]:
        """The swept keys the user typed (a derived one, like engine.max_num_seqs, follows one of them)."""
        typed = {k for row in self.rows for k in row.override_keys}
        return [k for k in self.swept if k in typed] or self.swept


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _text(cell: str | float | None) -> str:
    if cell is None:
        return ""
    return _number(cell) if isinstance(cell, float) else str(cell)


def to_csv(table: Table) -> str:
    """Full-precision values; empty cells for missing metrics."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerows([["" if c is None else c for c in table.cells(row)] for row in table.rows])
    return out.getvalue()


def to_markdown(table: Table) -> str:
    numeric = table.metric_columns
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---:" if i in numeric else "---" for i in range(len(table.header))) + "|",
    ]
    lines += ["| " + " | ".join(_text(c) for c in table.cells(row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_text(table: Table) -> str:
    """Aligned columns for the console; metrics right-aligned."""
    grid = [table.header, *([_text(c) for c in table.cells(row)] for row in table.rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(table.header))]
    numeric = table.metric_columns

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join(line(cells).rstrip() for cells in grid) + "\n"


FORMATS = {"table": to_text, "csv": to_csv, "markdown": to_markdown}


def all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every run of the experiments that matches ``filter_string``, page by page."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The runs of a sweep."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return all_runs(client, [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def experiment_rows(client: MlflowClient, name: str) -> list[RunRow]:
    """The experiment's benchmark runs as rows, each named with its sweep (the parent runs' own figures
    are their best child's, so they are no rows)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {name!r}")
    runs = all_runs(client, [experiment.experiment_id], "")
    sweeps = {run.info.run_id: run.info.run_name for run in runs if SWEEP_PARENT_TAG in run.data.tags}
    return [row_from_run(run, client, sweeps) for run in runs if run.info.run_id not in sweeps]
