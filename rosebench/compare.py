"""Did my change help? Compare a baseline and a candidate: runs, sweeps, capacity searches, or MLflow runs.

A folder of runs that differ only in ``trial`` is one side of several runs (see the README: take the two
sides' runs in turn). A sweep folder's points are matched by their other swept values. A capacity search
(``hydra/sweeper=capacity``: its sweep folder holds capacity.json, as its MLflow parent run's artifacts do)
is compared with another by the ratio of their capacities, an interval from the two brackets and a verdict
(better / worse / cannot tell; rosebench.capacity_comparison); --metric, --allow, --allow-contended and
--seed do not apply to it.

python -m rosebench.compare outputs/2026-11-30/10-00-00 outputs/2026-11-30/10-05-00
python -m rosebench.compare outputs/multirun/A outputs/multirun/B --markdown cmp.md --json cmp.json
python -m rosebench.compare RUN_ID_A RUN_ID_B --uri sqlite:///mlflow.db --fail-if-worse 5
python -m rosebench.compare A B --allow engine.attention   # the one key the change is about
python -m rosebench.compare A B --fail-if-worse 5 --allow-contended   # judge runs taken on a busy machine
python -m rosebench.compare outputs/capacity/A outputs/capacity/B --fail-if-worse 10   # two capacity searches

A side needs finished timed passes. A run that ended FAILED or KILLED, or one whose timed passes shared the
machine with busy processes (results.json ``run.contended``), is compared with a warning; --fail-if-worse
refuses to judge it (a contended one unless --allow-contended), and refuses a --metric either side lacks.

For two capacity searches, --fail-if-worse PCT fails when the whole capacity ratio interval lies at or
below 1 - PCT/100, and refuses to judge an interval with no upper bound (a baseline that held nothing, or a
candidate that held every value it probed): no candidate could fail it.

Exit codes: 0 compared; 1 the candidate is worse than --fail-if-worse allows, with the interval excluding
no change; 2 bad input (unreadable side, a side with no finished timed pass, configs that differ in keys
--allow does not name, a side the gate refuses, an output file that cannot be written; a capacity search
against anything else, two searches of different knobs or SLOs, an option that does not apply to them).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from rosebench.capacity import CAPACITY_FILE
from rosebench.capacity_comparison import (
    CapacityComparison,
    CapacitySide,
    compare_capacity,
    not_applicable,
    worse_than,
)
from rosebench.capacity_comparison import to_json as capacity_json
from rosebench.capacity_comparison import to_markdown as capacity_markdown
from rosebench.capacity_comparison import to_text as capacity_text
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


Side = Run | dict[str, Run] | CapacitySide


def _side(source: str, uri: str | None, downloads: Path) -> Side:
    """A run folder, a capacity search's sweep folder (or its capacity.json), a sweep folder (its runs by
    swept values), or an MLflow run id."""
    path = Path(source)
    if (path / CAPACITY_FILE).is_file() or (path.name == CAPACITY_FILE and path.is_file()):
        return CapacitySide.load(path, label=source)
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


def _mlflow_run(run_id: str, uri: str | None, downloads: Path) -> Run | CapacitySide:
    """The run's results.json, or its capacity.json when it is a capacity search's parent run."""
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
        capacity = any(a.path == CAPACITY_FILE for a in client.list_artifacts(run_id))
        client.download_artifacts(run_id, CAPACITY_FILE if capacity else RESULTS_FILE, str(target))
    except Exception as error:  # the store: unreachable, no such run, ...
        message = f"{run_id}: not a folder, and not a run in {redact_uri(resolved)} ({describe_error(error)})"
        raise ComparisonError(message) from None
    if capacity:
        return CapacitySide.load(target, label=f"run {run_id}", run_id=run_id)
    return Run.from_folder(target, label=f"run {run_id}", run_id=run_id)


def _log_comparison(
    comparisons: list[Comparison], reports: dict[str, str], uri: str | None, experiment: str
) -> str:
    """The comparison as an MLflow run: the ratios and intervals as metrics, both sides' run ids as tags,
    the Markdown and JSON reports as artifacts. Returns where to look at it."""
    first = comparisons[0]
    tags = {"baseline": first.baseline, "candidate": first.candidate}
    if len(comparisons) == 1:  # a sweep's points each have their own runs
        tags |= {"baseline_run_id": first.baseline_run_id, "candidate_run_id": first.candidate_run_id}
    metrics: dict[str, float] = {}
    for c in comparisons:
        prefix = re.sub(r"[^\w./ -]", "_", f"{c.point}/") if c.point else ""  # MLflow's allowed characters
        for m in c.metrics:
            figures = {"ratio": m.ratio, "ci_low": m.ci_low, "ci_high": m.ci_high}
            metrics |= {f"{k}/{prefix}{m.metric}": v for k, v in figures.items() if v is not None}
    return _log_run(metrics, tags, reports, uri, experiment)


def _log_capacity(c: CapacityComparison, reports: dict[str, str], uri: str | None, experiment: str) -> str:
    """A capacity comparison as an MLflow run: the ratio and its interval's bounded ends as metrics, the
    verdict and both sides' parent run ids as tags, the reports as artifacts."""
    figures = {
        "capacity_ratio": c.ratio,
        "capacity_ratio_low": c.ratio_low,
        "capacity_ratio_high": c.ratio_high,
    }
    metrics = {k: v for k, v in figures.items() if v is not None and math.isfinite(v)}
    tags = {"baseline": c.baseline, "candidate": c.candidate, "capacity_verdict": c.verdict}
    tags |= {"baseline_run_id": c.baseline_run_id, "candidate_run_id": c.candidate_run_id}
    return _log_run(metrics, tags, reports, uri, experiment)


def _log_run(
    metrics: dict[str, float],
    tags: dict[str, str | None],
    reports: dict[str, str],
    uri: str | None,
    experiment: str,
) -> str:
    """One finished MLflow run named after the two sides (``tags``' baseline and candidate) holding these
    metrics, tags and reports. Returns where to look at it."""
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
    name = f"compare {Path(tags['baseline'] or '').name} vs {Path(tags['candidate'] or '').name}"
    run = client.create_run(experiment_id, run_name=name)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items() if v is not None],
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


def _kind(side: Side) -> str:
    if isinstance(side, CapacitySide):
        return "a capacity search"
    return "a sweep" if isinstance(side, dict) else "a run"


def _not_applicable(args: argparse.Namespace) -> list[str]:
    """The run-comparison options given that a capacity comparison would silently ignore."""
    given = {
        "--metric": args.metric is not None,
        "--allow": bool(args.allow),
        "--allow-contended": args.allow_contended,
        "--seed": args.seed is not None,
    }
    return [option for option, present in given.items() if present]


def _show(
    text: str,
    reports: dict[str, str],
    outputs: dict[str, tuple[Path | None, str]],
    log: Callable[[], str] | None,
) -> int | None:
    """Print a comparison, write the reports asked for and log it when asked (``log`` says where it went);
    the exit code when a report cannot be written."""
    sys.stdout.write(text)
    if (code := _write_reports(outputs, reports)) is not None:
        return code
    if log is not None:
        try:
            print(redact(log()))
        except Exception as error:  # the figures are printed and written already
            _say(f"rosebench.compare: not logged to MLflow ({describe_error(error)})")
    return None


def _write_reports(outputs: dict[str, tuple[Path | None, str]], reports: dict[str, str]) -> int | None:
    """Write the reports --markdown and --json ask for; the exit code when one cannot be written."""
    for option, (path, artifact) in outputs.items():
        if path is not None:
            try:
                write_atomic(path, reports[artifact])
            except OSError as error:  # checked above; a full disk or a folder removed meanwhile
                return _fail(f"{option} {path}: could not write it ({error.strerror or error})")
    return None


def _compare_capacity(
    args: argparse.Namespace, c: CapacityComparison, outputs: dict[str, tuple[Path | None, str]]
) -> int:
    """Print, write and log a capacity comparison, then judge it for --fail-if-worse (its gate refusal is
    raised before anything is printed, as a run comparison's is)."""
    judged = None if args.fail_if_worse is None else worse_than(c, args.fail_if_worse)
    reports = {"comparison.md": capacity_markdown(c), "comparison.json": capacity_json(c)}
    log = partial(_log_capacity, c, reports, args.uri, args.experiment)
    if (code := _show(capacity_text(c), reports, outputs, log if args.log else None)) is not None:
        return code
    if judged is None:
        return 0
    failing, line = judged
    _say(f"rosebench.compare: {line}")
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosebench.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "baseline", help="a run folder, a sweep folder, a capacity search's sweep folder, or an MLflow run id"
    )
    parser.add_argument("candidate", help="the same kind of thing as the baseline")
    parser.add_argument(
        "--uri", help="MLflow tracking URI for run ids (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--allow", action="append", default=[], metavar="KEY", help="a config key (or prefix) that may differ"
    )
    parser.add_argument(
        "--metric", help=f"the metric --fail-if-worse judges (default: {next(iter(HEADLINE_METRICS))})"
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
        "--seed", type=int, help="the bootstrap's seed (same inputs, same interval; default 0)"
    )
    parser.add_argument("--log", action="store_true", help="also log the comparison as an MLflow run (--uri)")
    parser.add_argument("--experiment", default="rosebench-compare", help="the MLflow experiment for --log")
    args = parser.parse_args(argv)
    # --metric and --seed default to None so that a capacity comparison can tell them given.
    metric, seed = args.metric or next(iter(HEADLINE_METRICS)), 0 if args.seed is None else args.seed
    if metric not in HEADLINE_METRICS:
        return _fail(f"--metric {metric}: allowed values are {', '.join(HEADLINE_METRICS)}")
    if args.fail_if_worse is not None and not 0 <= args.fail_if_worse < 100:
        return _fail(f"--fail-if-worse {args.fail_if_worse}: must be a percentage in [0, 100)")
    outputs = {"--markdown": (args.markdown, "comparison.md"), "--json": (args.json, "comparison.json")}
    for option, (path, _) in outputs.items():
        if path is not None and (problem := output_file_problem(path)):
            return _fail(f"{option} {path}: {problem}")
    gate = None if args.fail_if_worse is None else Gate(metric, args.allow_contended)

    with tempfile.TemporaryDirectory(prefix="rosebench-compare-") as downloads:
        try:
            base, cand = (_side(s, args.uri, Path(downloads)) for s in (args.baseline, args.candidate))
            if isinstance(base, CapacitySide) or isinstance(cand, CapacitySide):
                if not (isinstance(base, CapacitySide) and isinstance(cand, CapacitySide)):
                    return _fail(
                        f"compare a capacity search with a capacity search: the baseline {args.baseline} is "
                        f"{_kind(base)}, the candidate {args.candidate} is {_kind(cand)}"
                    )
                if options := _not_applicable(args):
                    return _fail(not_applicable(options))
                capacity = compare_capacity(base, cand)
                return _compare_capacity(args, capacity, outputs)
            if isinstance(base, dict) != isinstance(cand, dict):
                return _fail("compare a run with a run, or a sweep with a sweep")
            if isinstance(base, dict):
                sweeps = compare_sweeps(base, cand, args.allow, seed, gate)
                comparisons, only = sweeps.points, (sweeps.only_baseline, sweeps.only_candidate)
            else:
                comparisons, only = [compare_runs(base, cand, args.allow, seed, gate=gate)], ([], [])
        except ComparisonError as error:
            return _fail(str(error))

    reports = {"comparison.md": to_markdown(comparisons, only), "comparison.json": to_json(comparisons, only)}
    log = partial(_log_comparison, comparisons, reports, args.uri, args.experiment)
    if (code := _show(to_text(comparisons, only), reports, outputs, log if args.log else None)) is not None:
        return code
    if args.fail_if_worse is None:
        return 0
    failing = _worse_than(comparisons, metric, args.fail_if_worse)
    for line in failing:
        _say(f"rosebench.compare: {metric} worse by more than {args.fail_if_worse}%: {line}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
