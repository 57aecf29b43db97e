"""Compare runs: their swept params and headline metrics as a table (text, CSV, Markdown) and plots.

python -m rosebench.report --experiment rosebench
python -m rosebench.report --parent <run id> --format markdown --plots plots/
python -m rosebench.report --sweep outputs/multirun/2026-11-30/05-30-00 --format csv --out sweep.csv

A sweep over a load knob (scheduler.request_rate, ...) also gets its latency-throughput frontier plots, and
its knee (where TTFT p99 first passes twice its low-load value) is printed on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rosebench.files import output_file_problem
from rosebench.tracking.frontier import knee_lines
from rosebench.tracking.run_folder import find_run_folders
from rosebench.tracking.settings import describe_error, redact
from rosebench.tracking.store import connect, resolve_tracking_uri, sqlite_path
from rosebench.tracking.table import (
    FORMATS,
    RunRow,
    Table,
    child_runs,
    experiment_rows,
    row_from_folder,
    row_from_run,
)


def _fail(message: str, code: int) -> int:
    """One line on stderr, with any URI's password taken out (MLflow's errors quote the tracking URI)."""
    print(redact(f"rosebench.report: error: {message}"), file=sys.stderr)
    return code


def _plots_problem(path: Path) -> str | None:
    """Why the plots cannot go into the directory ``path`` (created with its parents if missing), or None."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"{existing} is a file"
        return f"{where}; it must be a directory (created if missing)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {existing} is not writable"
    return None


def _rows(args: argparse.Namespace) -> list[RunRow]:
    if args.sweep is not None:
        return [row_from_folder(d) for d in find_run_folders(args.sweep)]
    uri = resolve_tracking_uri(args.uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise LookupError(f"no MLflow database at {db}")  # MlflowClient would create an empty one
    client = connect(uri)
    if args.parent:
        return [row_from_run(run, client) for run in child_runs(client, args.parent)]
    return experiment_rows(client, args.experiment)


def _knee_lines(table: Table) -> list[str]:
    """Where each sweep over a load knob has its knee, for stderr (stdout is the table, for parsers); the
    sweep named when the rows hold several."""
    lines = []
    for name, sweep in table.sweep_tables().items():
        prefix = f"{name}: " if table.grouped else ""
        lines += [prefix + line for summary in sweep.frontiers().values() for line in knee_lines(summary)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosebench.report", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="all runs of this MLflow experiment")
    source.add_argument("--parent", metavar="RUN_ID", help="the child runs of this sweep parent run")
    source.add_argument(
        "--sweep", type=Path, metavar="DIR", help="a run or sweep folder (reads results.json)"
    )
    parser.add_argument(
        "--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument("--format", choices=list(FORMATS), default="table")
    parser.add_argument("--out", type=Path, help="write the table here instead of stdout")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write metric-vs-param PNGs here")
    args = parser.parse_args(argv)

    if args.sweep is not None and not args.sweep.is_dir():
        return _fail(f"{args.sweep} is not a directory", 2)
    for option, path, check in (
        ("--out", args.out, output_file_problem),
        ("--plots", args.plots, _plots_problem),
    ):
        if path is not None and (problem := check(path)):
            return _fail(f"{option} {path}: {problem}", 2)
    try:
        rows = _rows(args)
    except (LookupError, ValueError) as error:
        return _fail(str(error), 1)
    except Exception as error:  # the store: unreachable, bad run id, ...
        return _fail(describe_error(error), 1)
    if not rows:
        return _fail("no runs found", 1)

    table = Table.of(rows)
    text = FORMATS[args.format](table)
    if args.out is not None:
        try:
            args.out.write_text(text)
        except OSError as error:  # checked above; a full disk, or a folder removed meanwhile
            return _fail(f"--out {args.out}: could not write it ({error.strerror or error})", 1)
    else:
        sys.stdout.write(text)
    for line in _knee_lines(table):
        print(line, file=sys.stderr)
    try:
        for path in table.plots(args.plots) if args.plots is not None else []:
            print(f"wrote {path}", file=sys.stderr)
    except OSError as error:
        return _fail(f"--plots {args.plots}: could not write a plot ({error.strerror or error})", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
