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

--log records the comparison as an MLflow run in --experiment, named
"<what differs>: <candidate> vs <baseline>" after the config keys that differ (else the commits) and the two
sides' MLflow runs (a run folder's run name, or the folder's name, when the store does not hold it):
each headline metric's ratio and interval rounded as a run's figures are, its verdict as a tag
(``verdict/<metric>``), and --metric's verdict as ``verdict``; the printed link opens a view of that verdict,
--metric's ratio and interval, then the other ratios. A sweep is a parent run with a child run per matched
point. The compared runs the store holds name the comparison in their ``rosebench.compared_in`` tag, and
the comparison's description links them.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import geometric_mean

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
    VERDICTS,
    Comparison,
    ComparisonError,
    Gate,
    Run,
    compare_runs,
    compare_sweeps,
    overall_verdict,
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


COMPARE_VIEW = "rosebench-compare"  # a run comparison's view: "-<metric>" added, its ratio first
CAPACITY_VIEW = "rosebench-compare-capacity"
VERDICT_TAG = "verdict"  # the headline's verdict: one filter (tags.verdict = 'worse') finds every regression
COMPARED_IN_TAG = "rosebench.compared_in"  # on a compared run: the comparison runs that read it, oldest first
RATIO_FIGURES = ("ratio", "ci_low", "ci_high")  # a run comparison's metrics: "<figure>/<metric>"


@dataclass(frozen=True)
class _LoggedSide:
    """A side as its comparison run names and links it."""

    name: str  # its MLflow run's name, else its run folder's run name, else its folder's name
    run_id: str | None  # the MLflow run that stands for it: the run, or a sweep's or capacity search's parent
    experiment_id: str | None = None  # set when that run is in the store the comparison is logged to

    def link(self) -> str:
        """Markdown naming the side: a link to its run's page when the store holds it, relative so that the
        UI resolves it on whichever host serves it, in the classic view as the runs table's link opens."""
        from rosebench.tracking.store import RUNS_TABLE_QUERY

        name = re.sub(r"([\\`*_\[\]])", r"\\\1", self.name)
        if self.experiment_id is None:
            return name
        return f"[{name}](#/experiments/{self.experiment_id}/runs/{self.run_id}{RUNS_TABLE_QUERY})"


def _side_run(source: str, side: Side) -> tuple[str | None, str]:
    """The MLflow run that stands for a side as its files say (a run's tracking.json, or the hand-off of a
    sweep or capacity search to its parent run), and the name to use when the store does not hold that run:
    one run's own name, else the folder's."""
    from rosebench.tracking.store import SweepHandoff

    path = Path(source)
    folder = path.parent if path.is_file() else path  # a capacity.json given itself
    run_id = None if isinstance(side, dict) else side.run_id
    if run_id is None and folder.is_dir() and (handoff := SweepHandoff.read(folder)) is not None:
        run_id = handoff.parent_run_id
    if isinstance(side, Run) and len(side.runs) == 1:
        return run_id, side.results.run.name
    return run_id, folder.resolve().name if folder.is_dir() else source


class _ComparisonStore:
    """The MLflow experiment a comparison is logged to, and the compared runs that its store holds."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from rosebench.tracking.store import connect, get_or_create_experiment, resolve_tracking_uri

        self.uri = resolve_tracking_uri(uri)
        self.client = connect(self.uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, self.uri)

    def side(self, run_id: str | None, name: str) -> _LoggedSide:
        """A side named as the store names its run, else ``name`` (a run logged elsewhere, or not at all)."""
        from rosebench.tracking.store import run_exists

        if run_id is None or not run_exists(self.client, run_id):
            return _LoggedSide(name, run_id)
        info = self.client.get_run(run_id).info
        return _LoggedSide(info.run_name or name, run_id, info.experiment_id)

    def save_view(self, key: str, metrics: Sequence[str]) -> None:
        """The runs table's view that the printed link opens: the verdict, then ``metrics``."""
        from rosebench.tracking.store import save_runs_view

        # As wide as the longest verdict ("no significant change"; a capacity one is shorter).
        widths = {VERDICT_TAG: max(map(len, VERDICTS))}
        save_runs_view(self.client, self.experiment_id, key, metrics=metrics, tags=widths)

    def log_run(
        self,
        name: str,
        metrics: dict[str, float],
        tags: dict[str, str | None],
        note: str,
        reports: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """A finished run holding these metrics (rounded as a run's figures are), tags, description and
        reports; returns its id."""
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

        from rosebench.tracking.mlflow_log import rounded

        tags = tags | {MLFLOW_RUN_NOTE: note, MLFLOW_PARENT_RUN_ID: parent_run_id}
        run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, rounded(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items() if v is not None],
        )
        for artifact, text in (reports or {}).items():
            self.client.log_text(run_id, text, artifact)
        self.client.set_terminated(run_id)
        return run_id

    def link_back(self, comparison_run_id: str, *sides: _LoggedSide) -> None:
        """Add the comparison to each side's ``rosebench.compared_in`` (a run may be compared many times:
        the oldest ids go first when the list would pass MLflow's limit on a tag's length)."""
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        for run_id in dict.fromkeys(s.run_id for s in sides if s.experiment_id is not None):
            listed = self.client.get_run(run_id).data.tags.get(COMPARED_IN_TAG, "")
            ids = [*filter(None, listed.split(",")), comparison_run_id]
            while len(",".join(ids)) > MAX_TAG_VAL_LENGTH:
                del ids[0]
            self.client.set_tag(run_id, COMPARED_IN_TAG, ",".join(ids))

    def hint(self, run_id: str, view: str) -> str:
        from rosebench.tracking.store import runs_table_url, ui_hint

        return ui_hint(self.uri, run_id, runs_table_url(self.uri, self.experiment_id, view=view))


def _note(baseline: _LoggedSide, candidate: _LoggedSide, report: str) -> str:
    """The comparison run's description: both sides, linked where the store holds them, and the report
    (MLflow renders it as Markdown), or where the report is when a description cannot hold it."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    sides = f"Candidate {candidate.link()} against baseline {baseline.link()}."
    note = f"{sides}\n\n{report}"
    if len(note) <= MAX_TAG_VAL_LENGTH:
        return note
    return f"{sides}\n\nThe report is too long for a description: see comparison.md in the artifacts."


def _ratio_figures(c: Comparison) -> dict[str, float]:
    """Each headline metric's ratio and interval ends (none when there were too few samples)."""
    figures: dict[str, float] = {}
    for m in c.metrics:
        values = dict(zip(RATIO_FIGURES, (m.ratio, m.ci_low, m.ci_high)))
        figures |= {f"{k}/{m.metric}": v for k, v in values.items() if v is not None}
    return figures


def _verdict_tags(verdicts: dict[str, str], metric: str) -> dict[str, str]:
    """``verdict/<metric>`` for each metric, and ``verdict``: the verdict on ``metric`` (the headline)."""
    headline = {VERDICT_TAG: verdicts[metric]} if metric in verdicts else {}
    return {f"{VERDICT_TAG}/{k}": v for k, v in verdicts.items()} | headline


def _geometric_means(comparisons: Sequence[Comparison]) -> dict[str, float]:
    """Each metric's ratio over a sweep's points as one figure: their geometric mean (a ratio of 2 and one
    of 0.5 cancel out, as they should), for the sweep's row when its points are collapsed."""
    ratios: dict[str, list[float]] = {}
    for c in comparisons:
        for m in c.metrics:
            if math.isfinite(m.ratio) and m.ratio > 0:
                ratios.setdefault(f"ratio/{m.metric}", []).append(m.ratio)
    return {k: geometric_mean(v) for k, v in ratios.items()}


def _what_differs(c: Comparison) -> str:
    """What tells the two sides apart, candidate first (``engine.attention=naive vs slot``; else their
    commits), to lead the comparison's name: MLflow's name column shows about 18 characters, and the two
    runs' own names share their start."""
    if c.config_differences:
        return ", ".join(f"{k}={cand} vs {base}" for k, (base, cand) in c.config_differences.items())
    base_commit, cand_commit = c.environment_differences.get("git_commit", (None, None))
    if base_commit and cand_commit:
        return f"git {str(cand_commit)[:7]} vs {str(base_commit)[:7]}"
    return ""


def _log_comparison(
    comparisons: list[Comparison],
    reports: dict[str, str],
    sides: Sequence[tuple[str, Side]],
    metric: str,
    uri: str | None,
    experiment: str,
) -> str:
    """The comparison as an MLflow run named "<what differs>: <candidate> vs <baseline>": per headline
    metric its ratio and interval (``ratio/<metric>``, ``ci_low/``, ``ci_high/``) and verdict
    (``verdict/<metric>``), ``metric`` (the one --fail-if-worse judges) as its headline: the ``verdict``
    tag and the first columns of the view the printed link opens. A sweep is a parent run (its points'
    verdicts counted, their ratios' geometric means) with a child run per matched point. The compared runs
    that the store holds are linked both ways. Returns where to look at it."""
    store = _ComparisonStore(uri, experiment)
    (base_source, base_side), (cand_source, _) = sides
    base, cand = (store.side(*_side_run(source, side)) for source, side in sides)
    view = f"{COMPARE_VIEW}-{metric}"
    others = [f"ratio/{m}" for m in HEADLINE_METRICS if m != metric]
    store.save_view(view, [*(f"{k}/{metric}" for k in RATIO_FIGURES), *others])
    tags = {
        "baseline": base_source,
        "candidate": cand_source,
        "baseline_run_id": base.run_id,
        "candidate_run_id": cand.run_id,
        "headline_metric": metric,
    }
    lead = _what_differs(comparisons[0])
    name = f"{lead}: {cand.name} vs {base.name}" if lead else f"{cand.name} vs {base.name}"
    if not isinstance(base_side, dict):
        [c] = comparisons
        run_id = _log_point(store, name, c, tags, base, cand, metric, reports["comparison.md"], reports)
        return store.hint(run_id, view)
    by_metric: dict[str, list[str]] = {}
    for c in comparisons:
        for m in c.metrics:
            by_metric.setdefault(m.metric, []).append(m.verdict)
    verdicts = {k: overall_verdict(v) for k, v in by_metric.items()}
    summary = (
        f"One child run per matched point ({len(comparisons)}); this run's ratios are the geometric means "
        "of the points' ratios.\n\n"
    )
    note = _note(base, cand, summary + reports["comparison.md"])
    parent = store.log_run(
        name, _geometric_means(comparisons), tags | _verdict_tags(verdicts, metric), note, reports
    )
    store.link_back(parent, base, cand)
    for c in comparisons:
        run_ids = (c.baseline_run_id, c.candidate_run_id)
        point_base, point_cand = (store.side(run_id, c.point) for run_id in run_ids)
        point_tags = {
            "baseline_run_id": point_base.run_id,
            "candidate_run_id": point_cand.run_id,
            "headline_metric": metric,
        }
        report = to_markdown([c])
        _log_point(
            store, c.point, c, point_tags, point_base, point_cand, metric, report, parent_run_id=parent
        )
    return store.hint(parent, view)


def _log_point(
    store: _ComparisonStore,
    name: str,
    c: Comparison,
    tags: dict[str, str | None],
    base: _LoggedSide,
    cand: _LoggedSide,
    metric: str,
    report: str,
    reports: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """One comparison (a pair of runs, or a sweep's point) as a run: its ratios, its verdicts with
    ``metric``'s as the headline, a description linking both sides, and the links back from them."""
    verdicts = {m.metric: m.verdict for m in c.metrics}
    note = _note(base, cand, report)
    all_tags = tags | _verdict_tags(verdicts, metric)
    run_id = store.log_run(name, _ratio_figures(c), all_tags, note, reports, parent_run_id)
    store.link_back(run_id, base, cand)
    return run_id


def _log_capacity(
    c: CapacityComparison,
    reports: dict[str, str],
    sides: Sequence[tuple[str, Side]],
    uri: str | None,
    experiment: str,
) -> str:
    """A capacity comparison as an MLflow run named "<candidate> vs <baseline>" after the searches' parent
    runs: the capacity ratio (the headline) and its interval's bounded ends as metrics, the verdict as the
    ``verdict`` tag (and ``capacity_verdict``), the reports as artifacts; the parent runs that the store
    holds are linked both ways. Returns where to look at it."""
    store = _ComparisonStore(uri, experiment)
    base, cand = (store.side(*_side_run(source, side)) for source, side in sides)
    figures = {
        "capacity_ratio": c.ratio,
        "capacity_ratio_low": c.ratio_low,
        "capacity_ratio_high": c.ratio_high,
    }
    store.save_view(CAPACITY_VIEW, list(figures))
    metrics = {k: v for k, v in figures.items() if v is not None and math.isfinite(v)}
    tags = {
        "baseline": c.baseline,
        "candidate": c.candidate,
        "baseline_run_id": base.run_id,
        "candidate_run_id": cand.run_id,
        "headline_metric": "capacity_ratio",
        VERDICT_TAG: c.verdict,
        "capacity_verdict": c.verdict,
    }
    note = _note(base, cand, reports["comparison.md"])
    run_id = store.log_run(f"{cand.name} vs {base.name}", metrics, tags, note, reports)
    store.link_back(run_id, base, cand)
    return store.hint(run_id, CAPACITY_VIEW)


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
    args: argparse.Namespace,
    c: CapacityComparison,
    sides: Sequence[tuple[str, Side]],
    outputs: dict[str, tuple[Path | None, str]],
) -> int:
    """Print, write and log a capacity comparison, then judge it for --fail-if-worse (its gate refusal is
    raised before anything is printed, as a run comparison's is)."""
    judged = None if args.fail_if_worse is None else worse_than(c, args.fail_if_worse)
    reports = {"comparison.md": capacity_markdown(c), "comparison.json": capacity_json(c)}
    log = partial(_log_capacity, c, reports, sides, args.uri, args.experiment)
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
            sides = ((args.baseline, base), (args.candidate, cand))
            if isinstance(base, CapacitySide) or isinstance(cand, CapacitySide):
                if not (isinstance(base, CapacitySide) and isinstance(cand, CapacitySide)):
                    return _fail(
                        f"compare a capacity search with a capacity search: the baseline {args.baseline} is "
                        f"{_kind(base)}, the candidate {args.candidate} is {_kind(cand)}"
                    )
                if options := _not_applicable(args):
                    return _fail(not_applicable(options))
                capacity = compare_capacity(base, cand)
                return _compare_capacity(args, capacity, sides, outputs)
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
    log = partial(_log_comparison, comparisons, reports, sides, metric, args.uri, args.experiment)
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
