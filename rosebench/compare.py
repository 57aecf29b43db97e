"""Did my change help? Compare a baseline and a candidate: runs, sweeps, or MLflow runs.

A folder of runs that differ only in ``trial`` is one side of several runs (see the README: take the two
sides' runs in turn). A sweep folder's points are matched by their other swept values.

python -m rosebench.compare outputs/2026-11-30/10-00-00 outputs/2026-11-30/10-05-00
python -m rosebench.compare outputs/multirun/A outputs/multirun/B --markdown cmp.md --json cmp.json
python -m rosebench.compare RUN_ID_A RUN_ID_B --uri sqlite:///mlflow.db --fail-if-worse 5
python -m rosebench.compare A B --allow engine.attention   # the one key the change is about
python -m rosebench.compare A B --fail-if-worse 5 --allow-contended   # judge runs taken on a busy machine

A side needs finished timed passes. A run that ended FAILED or KILLED, or one whose timed passes shared the
machine with busy processes (results.json ``run.contended``), is compared with a warning; --fail-if-worse
refuses to judge it (a contended one unless --allow-contended), and refuses a --metric either side lacks.

Exit codes: 0 compared; 1 the candidate is worse than --fail-if-worse allows, with the interval excluding
no change; 2 bad input (unreadable side, a side with no finished timed pass, configs that differ in keys
--allow does not name, a side the gate refuses, an output file that cannot be written).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from rosebench.comparison import (
    Comparison,
    ComparisonError,
    Gate,
    Run,
    compare_runs,
    compare_sweeps,
    sweep_points,
    to_json,
    to_markdown,
    to_text,
)
from rosebench.files import output_file_problem, write_atomic
from rosebench.results import HEADLINE_METRICS, RESULTS_FILE
from rosebench.tracking.settings import describe_error, redact, redact_uri


def _say(message: str) -> None:
    """A line on stderr, with any URI's password taken out (MLflow's errors quote the tracking URI)."""
    print(redact(message), file=sys.stderr)


def _fail(message: str) -> int:
    _say(f"rosebench.compare: error: {message}")
    return 2


def _side(source: str, uri: str | None, downloads: Path) -> Run | dict[str, Run]:
    """A run folder, a sweep folder (its runs by swept values), or an MLflow run id."""
    path = Path(source)
    if (path / RESULTS_FILE).is_file():
        return Run.from_folder(path)
    if path.is_dir():
        points = sweep_points(path)
        if not points:
            raise ComparisonError(f"{path}: no run folder (results.json) in it")
        return points.get("", points)  # a sweep over trial alone is one side of several runs
    if path.exists() or "/" in source:
        raise ComparisonError(f"{source}: neither a run folder (results.json) nor a sweep folder")
    return _mlflow_run(source, uri, downloads)


def _mlflow_run(run_id: str, uri: str | None, downloads: Path) -> Run:
    from rosebench.tracking.store import connect, resolve_tracking_uri, sqlite_path

    try:
        resolved = resolve_tracking_uri(uri)
    except ValueError as error:  # a file store
        raise ComparisonError(f"{run_id}: not a folder, and {error}") from None
    db = sqlite_path(resolved)
    if db is not None and not db.is_file():
        raise ComparisonError(f"{run_id}: not a folder, and no MLflow database at {db} to look it up in")
    try:
        client = connect(resolved)
        client.get_run(run_id)
        target = downloads / run_id
        target.mkdir()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
        client.download_artifacts(run_id, RESULTS_FILE, str(target))
    except Exception as error:  # the store: unreachable, no such run, ...
        message = f"{run_id}: not a folder, and not a run in {redact_uri(resolved)} ({describe_error(error)})"
        raise ComparisonError(message) from None
    return Run.from_folder(target, label=f"run {run_id}", run_id=run_id)


def _log_comparison(
    comparisons: list[Comparison], reports: dict[str, str], uri: str | None, experiment: str
) -> str:
    """The comparison as an MLflow run: the ratios and intervals as metrics, both sides' run ids as tags,
    the Markdown and JSON reports as artifacts. Returns where to look at it."""
    from mlflow.entities import Metric, RunTag

    from rosebench.tracking.store import (
        connect,
        get_or_create_experiment,
        resolve_tracking_uri,
        runs_table_url,
        ui_hint,
    )

    resolved = resolve_tracking_uri(uri)
    client = connect(resolved)
    experiment_id = get_or_create_experiment(client, experiment, resolved)
    first = comparisons[0]
    tags = {"baseline": first.baseline, "candidate": first.candidate}
    if len(comparisons) == 1:  # a sweep's points each have their own runs
        tags |= {"baseline_run_id": first.baseline_run_id, "candidate_run_id": first.candidate_run_id}
    name = f"compare {Path(first.baseline).name} vs {Path(first.candidate).name}"
    run = client.create_run(experiment_id, run_name=name)
    now = int(time.time() * 1000)
    metrics = []
    for c in comparisons:
        prefix = re.sub(r"[^\w./ -]", "_", f"{c.point}/") if c.point else ""  # MLflow's allowed characters
        for m in c.metrics:
            figures = {"ratio": m.ratio, "ci_low": m.ci_low, "ci_high": m.ci_high}
            metrics += [
                Metric(f"{k}/{prefix}{m.metric}", v, now, 0) for k, v in figures.items() if v is not None
            ]
    client.log_batch(
        run.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items() if v is not None]
    )
    for artifact, text in reports.items():
        client.log_text(run.info.run_id, text, artifact)
    client.set_terminated(run.info.run_id)
    return ui_hint(resolved, run.info.run_id, runs_table_url(resolved, experiment_id, view=None))


def _worse_than(comparisons: list[Comparison], metric: str, pct: float) -> list[str]:
    """The points where ``metric`` is worse by more than ``pct`` percent and significantly so."""
    higher_is_better = HEADLINE_METRICS[metric]
    failing = []
    for c in comparisons:
        m = c.metric(metric)
        if m is None or m.verdict != "worse":
            continue
        loss = -m.change() if higher_is_better else m.change()
        if loss * 100 > pct:
            failing.append(f"{c.point or metric}: {m.ratio:.3f}x, interval [{m.ci_low:.3f}, {m.ci_high:.3f}]")
    return failing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosebench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="a run folder, a sweep folder, or an MLflow run id")
    parser.add_argument("candidate", help="the same kind of thing as the baseline")
    parser.add_argument(
        "--uri", help="MLflow tracking URI for run ids (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--allow", action="append", default=[], metavar="KEY", help="a config key (or prefix) that may differ"
    )
    parser.add_argument(
        "--metric", default=next(iter(HEADLINE_METRICS)), help="the metric --fail-if-worse judges"
    )
    parser.add_argument(
        "--fail-if-worse", type=float, metavar="PCT", help="exit 1 when significantly worse by more"
    )
    parser.add_argument(
        "--allow-contended",
        action="store_true",
        help="let --fail-if-worse judge a side whose machine was busy (run.contended); the warning stays",
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write a Markdown report")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the comparison as JSON")
    parser.add_argument(
        "--seed", type=int, default=0, help="the bootstrap's seed (same inputs, same interval)"
    )
    parser.add_argument("--log", action="store_true", help="also log the comparison as an MLflow run (--uri)")
    parser.add_argument("--experiment", default="rosebench-compare", help="the MLflow experiment for --log")
    args = parser.parse_args(argv)
    if args.metric not in HEADLINE_METRICS:
        return _fail(f"--metric {args.metric}: allowed values are {', '.join(HEADLINE_METRICS)}")
    if args.fail_if_worse is not None and not 0 <= args.fail_if_worse < 100:
        return _fail(f"--fail-if-worse {args.fail_if_worse}: must be a percentage in [0, 100)")
    outputs = {"--markdown": (args.markdown, "comparison.md"), "--json": (args.json, "comparison.json")}
    for option, (path, _) in outputs.items():
        if path is not None and (problem := output_file_problem(path)):
            return _fail(f"{option} {path}: {problem}")
    gate = None if args.fail_if_worse is None else Gate(args.metric, args.allow_contended)

    with tempfile.TemporaryDirectory(prefix="rosebench-compare-") as downloads:
        try:
            base, cand = (_side(s, args.uri, Path(downloads)) for s in (args.baseline, args.candidate))
            if isinstance(base, dict) != isinstance(cand, dict):
                return _fail("compare a run with a run, or a sweep with a sweep")
            if isinstance(base, dict):
                sweeps = compare_sweeps(base, cand, args.allow, args.seed, gate)
                comparisons, only = sweeps.points, (sweeps.only_baseline, sweeps.only_candidate)
            else:
                comparisons, only = [compare_runs(base, cand, args.allow, args.seed, gate=gate)], ([], [])
        except ComparisonError as error:
            return _fail(str(error))

    sys.stdout.write(to_text(comparisons, only))
    reports = {"comparison.md": to_markdown(comparisons, only), "comparison.json": to_json(comparisons, only)}
    for option, (path, artifact) in outputs.items():
        if path is not None:
            try:
                write_atomic(path, reports[artifact])
            except OSError as error:  # checked above; a full disk or a folder removed meanwhile
                return _fail(f"{option} {path}: could not write it ({error.strerror or error})")
    if args.log:
        try:
            print(redact(_log_comparison(comparisons, reports, args.uri, args.experiment)))
        except Exception as error:  # the figures are printed and written already
            _say(f"rosebench.compare: not logged to MLflow ({describe_error(error)})")
    if args.fail_if_worse is None:
        return 0
    failing = _worse_than(comparisons, args.metric, args.fail_if_worse)
    for line in failing:
        _say(f"rosebench.compare: {args.metric} worse by more than {args.fail_if_worse}%: {line}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
