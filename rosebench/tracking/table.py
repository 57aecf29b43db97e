"""Runs as a table: their swept params and headline metrics, from MLflow runs or run folders, as text,
CSV or Markdown, with plots. Used by sweep parent runs and by ``rosebench.report``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rosebench.overrides import override_values
from rosebench.tracking.plots import HEADLINE_METRICS, SweepPoint, plot_sweep
from rosebench.tracking.run_folder import config_params, read_run

SWEEP_PARENT_TAG = "rosebench_sweep_parent"  # set on sweep parent runs, which have no metrics of their own


@dataclass
class RunRow:
    """One run: its name, status, params (config plus Hydra overrides) and metrics."""

    name: str
    status: str
    params: dict[str, str]
    override_keys: list[str]
    metrics: dict[str, float]
    order: tuple[float, float]  # (Hydra job number, start time): jobs in launch order


def _row(
    name: str,
    status: str,
    params: dict[str, str],
    overrides: list[str],
    metrics: dict[str, float],
    order: tuple[float, float],
) -> RunRow:
    from_overrides = override_values(overrides)
    # Resolved config values win; overrides add what the config does not hold (config group choices).
    return RunRow(name, status, {**from_overrides, **params}, list(from_overrides), metrics, order)


def row_from_run(run: Run) -> RunRow:
    """A row from an MLflow run logged by rosebench.tracking."""
    tags = run.data.tags
    job_num = float(tags["hydra_job_num"]) if "hydra_job_num" in tags else math.inf
    return _row(
        run.info.run_name or run.info.run_id,
        run.info.status,
        dict(run.data.params),
        json.loads(tags.get("hydra_overrides", "[]")),
        dict(run.data.metrics),
        (job_num, float(run.info.start_time or 0)),
    )


def row_from_folder(run_dir: Path) -> RunRow:
    """A row from a run folder's results.json (no MLflow involved)."""
    results = read_run(run_dir)
    job_num = results.run.job_num
    return _row(
        results.run.name,
        results.status,
        config_params(results.config),
        results.run.overrides,
        {k: float(v) for k, v in results.metrics.items() if isinstance(v, (int, float))},
        (math.inf if job_num is None else float(job_num), 0.0),
    )


def varying_params(rows: Sequence[RunRow]) -> list[str]:
    """Params whose values differ across the runs; keys set by overrides first, in command-line order.

    Runs that lack a param (one killed before logging it) do not make it differ.
    """
    keys = dict.fromkeys(k for row in rows for k in row.override_keys)
    keys.update(dict.fromkeys(k for row in rows for k in sorted(row.params)))
    return [k for k in keys if len({row.params[k] for row in rows if k in row.params}) > 1]


@dataclass
class Table:
    """Runs as a table: run name, swept params, headline metrics, status."""

    swept: list[str]
    rows: list[RunRow]

    @classmethod
    def of(cls, rows: Iterable[RunRow]) -> Table:
        ordered = sorted(rows, key=lambda r: (*r.order, r.name))
        return cls(varying_params(ordered), ordered)

    @property
    def header(self) -> list[str]:
        return ["run", *self.swept, *HEADLINE_METRICS, "status"]

    @property
    def metric_columns(self) -> range:
        start = 1 + len(self.swept)
        return range(start, start + len(HEADLINE_METRICS))

    def cells(self, row: RunRow) -> list[str | float | None]:
        metrics: list[str | float | None] = [row.metrics.get(m) for m in HEADLINE_METRICS]
        return [row.name, *(row.params.get(k, "") for k in self.swept), *metrics, row.status]

    def columns(self) -> dict[str, list[str | float | None]]:
        """Column name -> values, the shape `MlflowClient.log_table` takes."""
        return {name: [self.cells(row)[i] for row in self.rows] for i, name in enumerate(self.header)}

    def points(self) -> list[SweepPoint]:
        return [SweepPoint(row.params, row.metrics) for row in self.rows]

    def plots(self, out_dir: Path) -> list[Path]:
        return plot_sweep(self.points(), self.swept, out_dir)


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


def _all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return _all_runs(client, [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def experiment_runs(client: MlflowClient, name: str) -> list[Run]:
    """The experiment's benchmark runs (sweep parents left out: they have no metrics of their own)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {name!r}")
    runs = _all_runs(client, [experiment.experiment_id], "")
    return [run for run in runs if SWEEP_PARENT_TAG not in run.data.tags]
