"""Did a change help? Two runs (or two sweeps) compared metric by metric, with a confidence interval.

Method: for each headline metric, the ratio candidate / baseline of the mean over the timed passes (what
results.json reports), and a 95% percentile bootstrap interval of that ratio, each side resampled
independently ``RESAMPLES`` times. A side may be several runs of one config (a sweep over ``trial``): then
the bootstrap is two-level, runs first and each picked run's passes next, so the interval holds the
run-to-run drift that passes of one run never see (two runs of one config measured 1.11x apart here while
each run's passes agreed within 5%). A verdict is "better" or "worse" only when the interval excludes 1
and the change is at least ``NEGLIGIBLE``; which side of 1 is better depends on the metric (higher
throughput, lower latency and memory). Passes, not requests, are the samples: an offline pass's requests
share one prefill (identical TTFTs: a zero-width interval), and one pass's requests see none of the
pass-to-pass spread.

A side must have finished timed passes. A run that ended FAILED or KILLED, or that shared the machine with
busy processes (``run.contended``), is still read, with a warning; a ``Gate`` (``--fail-if-worse``)
refuses a verdict on it instead, and on a judged metric either side lacks.

No MLflow and no torch here: ``rosebench.compare`` reads the runs and writes the outputs.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from rosebench.metrics import percentile
from rosebench.overrides import override_values
from rosebench.results import HEADLINE_METRICS, RunResults
from rosebench.tracking.run_folder import TrackingRecord, find_run_folders, flatten, param_text, read_results

RESAMPLES = 2000
CONFIDENCE = 0.95
RESOLVE_CHANGE = 0.05  # the change the "too few passes" warning sizes `repeat` for
MIN_PASSES = 3
NEGLIGIBLE = 0.01  # a change smaller than 1% is no change, however narrow its interval (peak RSS)
_PER_REQUEST = {"ttft": "ttft_ms", "e2e": "e2e_ms"}  # outputs.jsonl columns with one value per request
# Keys that may differ without making two runs incomparable: where results go, and how they are observed.
IGNORED_CONFIG = ("tracking.", "profile.", "repeat", "warmup", "trial")
ENVIRONMENT_KEYS = ("device", "device_name", "torch", "cuda", "cpu", "cpu_capability", "git_commit")
ENDED_BADLY = ("FAILED", "KILLED")  # results.json run.status of a run that did not finish
SIDES = ("baseline", "candidate")
# A metric's verdicts, worst first: how a summary of several sweep points orders them.
VERDICTS = ("worse", "better", "no significant change", "not enough samples")


class ComparisonError(ValueError):
    """Two runs that cannot be compared, or a side that cannot be read: a one-line message."""


@dataclass
class Run:
    """One side of a comparison: one run, or several runs of one config (its trials), and their source."""

    label: str  # the folder, sweep point or MLflow run id
    runs: list[RunResults]
    run_id: str | None = None  # its MLflow run, when it is one logged run
    sources: list[str] = field(default_factory=list)  # where each run was read (a folder, "run <id>")

    @classmethod
    def from_folder(cls, run_dir: Path, label: str | None = None, run_id: str | None = None) -> Run:
        results, why = read_results(run_dir)
        if results is None:
            raise ComparisonError(why)
        record = TrackingRecord.read(run_dir)
        label = label or str(run_dir)
        return cls(label, [results], run_id or (record.run_id if record else None), [label])

    def named(self) -> list[tuple[str, RunResults]]:
        """Each run and how a message names it: the side's label, with the run's folder when it differs."""
        sources = self.sources or [self.label] * len(self.runs)
        return [(s if s == self.label else f"{self.label} ({s})", r) for s, r in zip(sources, self.runs)]

    @property
    def results(self) -> RunResults:
        """The first run: its config and environment stand for the side's (trials differ in nothing else)."""
        return self.runs[0]

    def passes(self, metric: str) -> list[list[float]]:
        """Each run's pass values of ``metric``."""
        return [[p[metric] for p in r.passes if metric in p] for r in self.runs]

    def has(self, metric: str) -> bool:
        """Whether every run measured ``metric`` (in its figures and in a timed pass)."""
        return all(metric in r.metrics and any(metric in p for p in r.passes) for r in self.runs)


@dataclass
class MetricComparison:
    metric: str
    baseline: float
    candidate: float
    ratio: float
    ci_low: float | None  # None: too few samples for an interval
    ci_high: float | None
    verdict: str  # better, worse, no significant change, or "not enough samples"
    samples: str  # timed passes, baseline/candidate: "3/3"

    def change(self) -> float:
        return self.ratio - 1.0


@dataclass
class Comparison:
    baseline: str
    candidate: str
    baseline_run_id: str | None
    candidate_run_id: str | None
    config_differences: dict[str, tuple[Any, Any]]
    environment_differences: dict[str, tuple[Any, Any]]
    metrics: list[MetricComparison]
    warnings: list[str] = field(default_factory=list)
    point: str = ""  # the sweep point, for sweep comparisons
    metrics_only_in: dict[str, list[str]] = field(
        default_factory=dict
    )  # side -> headline metrics it alone has

    def metric(self, name: str) -> MetricComparison | None:
        return next((m for m in self.metrics if m.metric == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("config_differences", "environment_differences"):
            data[key] = {k: {"baseline": a, "candidate": b} for k, (a, b) in getattr(self, key).items()}
        return data


def config_differences(a: RunResults, b: RunResults) -> dict[str, tuple[Any, Any]]:
    """Config keys whose values differ (left out: where results go and how they are observed)."""
    flat_a, flat_b = flatten(a.config), flatten(b.config)
    keys = [k for k in {**flat_a, **flat_b} if not k.startswith(IGNORED_CONFIG)]
    return {
        k: (flat_a.get(k), flat_b.get(k))
        for k in keys
        if param_text(flat_a.get(k)) != param_text(flat_b.get(k))
    }


def environment_differences(a: RunResults, b: RunResults) -> dict[str, tuple[Any, Any]]:
    pairs = {k: (a.environment.get(k), b.environment.get(k)) for k in ENVIRONMENT_KEYS}
    return {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}


def check_comparable(differences: dict[str, tuple[Any, Any]], allow: Sequence[str]) -> None:
    """Refuse differing config keys that ``allow`` (keys or key prefixes ending in ".") does not name."""
    refused = [k for k in differences if not any(k == a or k.startswith(f"{a.rstrip('.')}.") for a in allow)]
    if refused:
        shown = ", ".join(f"{k} ({differences[k][0]} vs {differences[k][1]})" for k in refused)
        raise ComparisonError(
            f"the configs differ in {shown}; compare anyway with " + " ".join(f"--allow {k}" for k in refused)
        )


@dataclass(frozen=True)
class Gate:
    """What ``--fail-if-worse`` demands of both sides before it judges ``metric``: runs that finished, a
    machine nobody else was using (unless ``allow_contended``), and the metric itself."""

    metric: str
    allow_contended: bool = False


def _ending(results: RunResults) -> str:
    during = results.run.interrupted_during
    return f"the run ended {results.status}" + (f", interrupted during {during}" if during else "")


def _contention(role: str, side: Run) -> str | None:
    """Which of the side's runs were contended and by how much, or None when none was."""
    contended = [(name, r) for name, r in side.named() if r.run.contended]
    if not contended:
        return None
    shares = [r.metrics.get("contention_max") for _, r in contended]
    known = [s for s in shares if isinstance(s, int | float) and math.isfinite(s)]
    how = (
        f"other processes used up to {max(known):.0%} of the machine's cores during a timed pass"
        if known
        else "other processes used the machine's cores during a timed pass (contention_max not recorded)"
    )
    which = (
        contended[0][0]
        if len(side.runs) == 1
        else f"{side.label} ({len(contended)} of {len(side.runs)} runs)"
    )
    return f"{role} {which} was contended: {how}"


def check_passes(role: str, side: Run) -> None:
    """Refuse a side that has nothing to compare: a run with no finished timed pass (it crashed, or was
    stopped before its first pass ended)."""
    for name, results in side.named():
        if not results.passes:
            raise ComparisonError(
                f"{role} {name}: no finished timed pass ({_ending(results)}); nothing to compare"
            )


def check_gate(role: str, side: Run, gate: Gate) -> None:
    """Refuse to judge a side with a run that did not finish, or a contended one unless ``gate`` allows it."""
    for name, results in side.named():
        if results.status in ENDED_BADLY:
            raise ComparisonError(
                f"{role} {name}: {_ending(results)}; --fail-if-worse judges only runs that finished: rerun it"
            )
    contention = _contention(role, side)
    if not gate.allow_contended and contention:
        raise ComparisonError(
            f"{contention}; --fail-if-worse gives no verdict on a contended run (--allow-contended overrides)"
        )


def _side_warnings(role: str, side: Run) -> list[str]:
    warnings = [
        f"{role} {name}: {_ending(r)}; compared on the {len(r.passes)} timed pass"
        f"{'' if len(r.passes) == 1 else 'es'} that finished"
        for name, r in side.named()
        if r.status in ENDED_BADLY
    ]
    contention = _contention(role, side)
    if contention:
        warnings.append(f"{contention}; its timings measure the busy machine as much as the change")
    return warnings


def compare_runs(
    baseline: Run,
    candidate: Run,
    allow: Sequence[str] = (),
    seed: int = 0,
    point: str = "",
    gate: Gate | None = None,
) -> Comparison:
    """``baseline`` against ``candidate``; ``ComparisonError`` when a side has nothing to compare, the
    configs differ beyond ``allow``, or the ``gate`` refuses a side."""
    sides = dict(zip(SIDES, (baseline, candidate)))
    for role, side in sides.items():
        check_passes(role, side)
    if gate is not None:
        for role, side in sides.items():
            check_gate(role, side, gate)
    differences = config_differences(baseline.results, candidate.results)
    check_comparable(differences, allow)
    if gate is not None:
        lacking = [f"the {role} {side.label}" for role, side in sides.items() if not side.has(gate.metric)]
        if lacking:
            raise ComparisonError(
                f"--metric {gate.metric}: not measured in {' nor in '.join(lacking)} (a figure with no "
                "samples is absent); --fail-if-worse judges only a metric both sides have"
            )
    rng = random.Random(seed)
    metrics, warnings = [], [w for role, side in sides.items() for w in _side_warnings(role, side)]
    only: dict[str, list[str]] = {}
    for metric, higher_is_better in HEADLINE_METRICS.items():
        present = [role for role, side in sides.items() if side.has(metric)]
        if len(present) == 1:
            only.setdefault(present[0], []).append(metric)
        if len(present) == 2:
            metrics.append(_compare_metric(metric, higher_is_better, baseline, candidate, rng))
    judged = next((m for m in metrics if gate is not None and m.metric == gate.metric), None)
    if judged is not None and judged.ci_low is None:  # a gate that cannot judge must not pass
        raise ComparisonError(
            f"--metric {judged.metric}: {judged.samples.replace('/', ' and ')} timed passes give no "
            "interval; --fail-if-worse needs at least 2 a side (repeat=N)"
        )
    passes = tuple(sum(len(r.passes) for r in side.runs) for side in (baseline, candidate))
    if min(passes) < MIN_PASSES:
        warnings.append(
            f"{passes[0]} and {passes[1]} timed passes: too few for a useful interval (at least "
            f"{MIN_PASSES} each; repeat=N sets it)"
        )
    if len(baseline.runs) == 1 or len(candidate.runs) == 1:
        warnings.append(
            "one run on a side: its passes show no run-to-run drift (repeat both runs in turn with "
            "trial=0,1,2 into one folder a side, and compare the folders)"
        )
    throughput = next(iter(HEADLINE_METRICS))
    needed = _repeat_needed(baseline, candidate, throughput)
    if needed is not None and needed > min(passes):
        warnings.append(
            f"the passes' spread needs about repeat={needed} on both sides for a "
            f"{RESOLVE_CHANGE:.0%} change in {throughput} to be told from noise"
        )
    return Comparison(
        baseline.label,
        candidate.label,
        baseline.run_id,
        candidate.run_id,
        differences,
        environment_differences(baseline.results, candidate.results),
        metrics,
        warnings,
        point,
        only,
    )


def _compare_metric(
    metric: str, higher_is_better: bool, baseline: Run, candidate: Run, rng: random.Random
) -> MetricComparison:
    base_runs, cand_runs = baseline.passes(metric), candidate.passes(metric)
    base, cand = fmean(chain.from_iterable(base_runs)), fmean(chain.from_iterable(cand_runs))
    ratio = cand / base if base else math.nan
    samples = "/".join(_count(runs) for runs in (base_runs, cand_runs))
    if min(sum(map(len, base_runs)), sum(map(len, cand_runs))) < 2 or not base:
        return MetricComparison(metric, base, cand, ratio, None, None, "not enough samples", samples)
    low, high = bootstrap_ratio(base_runs, cand_runs, rng)
    if abs(ratio - 1) < NEGLIGIBLE or low <= 1.0 <= high:
        verdict = "no significant change"
    elif (low > 1.0) == higher_is_better:
        verdict = "better"
    else:
        verdict = "worse"
    return MetricComparison(metric, base, cand, ratio, low, high, verdict, samples)


def _count(runs: list[list[float]]) -> str:
    """``5`` for one run of five passes, ``3x5`` for three runs of five (``3x?`` when they differ)."""
    if len(runs) == 1:
        return str(len(runs[0]))
    sizes = {len(r) for r in runs}
    return f"{len(runs)}x{sizes.pop() if len(sizes) == 1 else '?'}"


def bootstrap_ratio(
    baseline: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    rng: random.Random,
    resamples: int = RESAMPLES,
) -> tuple[float, float]:
    """The ``CONFIDENCE`` percentile interval of mean(candidate) / mean(baseline), where each side is a list
    of runs' pass values, resampled in two levels: runs with replacement, then each picked run's passes."""

    def draw(runs: Sequence[Sequence[float]]) -> float:
        picked = [v for run in rng.choices(runs, k=len(runs)) for v in rng.choices(run, k=len(run))]
        return fmean(picked)

    ratios = []
    for _ in range(resamples):
        base = draw(baseline)
        if base:
            ratios.append(draw(candidate) / base)
    tail = (1 - CONFIDENCE) / 2 * 100
    return percentile(ratios, tail), percentile(ratios, 100 - tail)


def _repeat_needed(baseline: Run, candidate: Run, metric: str) -> int | None:
    """Passes per side for a 95% interval of the ratio of means to be narrower than +-RESOLVE_CHANGE,
    from the observed coefficients of variation (normal approximation)."""
    cvs = []
    for side in (baseline, candidate):
        values = list(chain.from_iterable(side.passes(metric)))
        if len(values) < 2 or not sum(values):
            return None
        cvs.append(stdev(values) / fmean(values))
    return math.ceil(1.96**2 * (cvs[0] ** 2 + cvs[1] ** 2) / RESOLVE_CHANGE**2)


# -- sweeps -----------------------------------------------------------------------------------------------
@dataclass
class SweepComparison:
    points: list[Comparison]
    only_baseline: list[str]
    only_candidate: list[str]


def sweep_points(sweep_dir: Path) -> dict[str, Run]:
    """A sweep folder's runs keyed by their swept values (``num_requests=16``), in folder order; the runs of
    one point that differ only in ``trial`` are pooled into one side. A sweep over ``trial`` alone is one
    point, keyed ``""``."""
    runs = [Run.from_folder(d) for d in find_run_folders(sweep_dir)]
    values = [override_values(r.results.run.overrides) for r in runs]
    keys = dict.fromkeys(k for v in values for k in v if k != "trial")
    swept = [k for k in keys if len({v.get(k) for v in values}) > 1]
    points: dict[str, Run] = {}
    for run, v in zip(runs, values):
        point = " ".join(f"{k}={v.get(k)}" for k in swept)
        if point in points:
            points[point].runs += run.runs
            points[point].sources += run.sources
            points[point].run_id = None
        else:
            points[point] = Run(point or str(sweep_dir), run.runs, run.run_id, run.sources)
    return points


def overall_verdict(verdicts: Sequence[str]) -> str:
    """Several sweep points' verdicts on one metric in a phrase: the verdict when they all share it, else how
    many points reached each, worst first ("2 worse, 1 no significant change")."""
    counts = Counter(verdicts)
    if len(counts) == 1:
        return verdicts[0]
    return ", ".join(f"{counts[v]} {v}" for v in sorted(counts, key=VERDICTS.index))


def compare_sweeps(
    baseline: dict[str, Run],
    candidate: dict[str, Run],
    allow: Sequence[str] = (),
    seed: int = 0,
    gate: Gate | None = None,
) -> SweepComparison:
    """Points matched by their swept values; each pair as ``compare_runs`` (the swept keys themselves are
    allowed to differ between points, not between a matched pair)."""
    common = [p for p in baseline if p in candidate]
    return SweepComparison(
        [compare_runs(baseline[p], candidate[p], allow, seed, point=p, gate=gate) for p in common],
        [p for p in baseline if p not in candidate],
        [p for p in candidate if p not in baseline],
    )


# -- output -----------------------------------------------------------------------------------------------
def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4g}"


def _rows(c: Comparison) -> list[list[str]]:
    rows = []
    for m in c.metrics:
        interval = "-" if m.ci_low is None else f"[{m.ci_low:.3f}, {m.ci_high:.3f}]"
        rows.append(
            [
                m.metric,
                _number(m.baseline),
                _number(m.candidate),
                f"{m.ratio:.3f}",
                interval,
                m.verdict,
                m.samples,
            ]
        )
    return rows


HEADER = ["metric", "baseline", "candidate", "ratio", f"{CONFIDENCE:.0%} CI of ratio", "verdict", "passes"]


def _notes(c: Comparison) -> list[str]:
    notes = [f"config differs (allowed): {k} = {a} vs {b}" for k, (a, b) in c.config_differences.items()]
    notes += [f"environment differs: {k} = {a} vs {b}" for k, (a, b) in c.environment_differences.items()]
    notes += [
        f"only the {side} has {', '.join(names)}: not compared" for side, names in c.metrics_only_in.items()
    ]
    return notes + [f"warning: {w}" for w in c.warnings]


def to_text(comparisons: Sequence[Comparison], only: tuple[list[str], list[str]] = ([], [])) -> str:
    out = []
    for c in comparisons:
        rows = [HEADER, *_rows(c)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        title = f"baseline {c.baseline}\ncandidate {c.candidate}"
        out.append(f"{c.point}\n{title}" if c.point else title)
        out += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        out += _notes(c)
        out.append("")
    out += _only_lines(only)
    return "\n".join(out).rstrip() + "\n"


def to_markdown(comparisons: Sequence[Comparison], only: tuple[list[str], list[str]] = ([], [])) -> str:
    out = []
    for c in comparisons:
        heading = f"### {c.point}\n\n" if c.point else ""
        out.append(f"{heading}Baseline `{c.baseline}`, candidate `{c.candidate}`\n")
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(r) + " |" for r in _rows(c)]
        out += [f"\n- {n}" for n in _notes(c)]
        out.append("")
    out += [f"- {line}" for line in _only_lines(only)]
    return "\n".join(out).rstrip() + "\n"


def _only_lines(only: tuple[list[str], list[str]]) -> list[str]:
    return [f"only in the baseline sweep: {p}" for p in only[0]] + [
        f"only in the candidate sweep: {p}" for p in only[1]
    ]


def to_json(comparisons: Sequence[Comparison], only: tuple[list[str], list[str]] = ([], [])) -> str:
    data = {
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "comparisons": [c.to_dict() for c in comparisons],
        "only_baseline": only[0],
        "only_candidate": only[1],
    }
    return json.dumps(data, indent=2) + "\n"
