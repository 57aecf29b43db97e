"""Did my change move capacity? Two capacity searches compared by their brackets.

Method: a search's answer is a bracket, not a number: its true capacity lies in [capacity, capacity_upper),
at or above the highest value shown to hold and below the lowest value not shown to hold (nothing held: in
[0, capacity_upper); everything held: in [capacity, infinity)). Wherever each true capacity lies in its
bracket, the ratio candidate / baseline lies between low = candidate capacity / baseline capacity_upper and
high = candidate capacity_upper / baseline capacity; an open end makes low 0 or high unbounded (null in the
JSON). That interval is all the uncertainty there is to add: each probe's pass or fail already has its own
confidence (the attainment's Wilson interval), so no bootstrap is drawn. The verdict is "better" when low >=
1 (the candidate held a load the baseline did not), "worse" when high <= 1 (the baseline held a load the
candidate did not), else "cannot tell" (the brackets overlap). The point estimate is the ratio of the
brackets' geometric midpoints (scale-free, like the ratio itself), none while a bracket is open.

Only searches of one knob, one set of SLO bounds and one attainment target compare: a capacity exists only
for them. No MLflow here: ``rosebench.compare`` finds the reports and writes the outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosebench.capacity import CAPACITY_FILE, CapacityReport
from rosebench.comparison import SIDES, ComparisonError

# The search settings that change what "held" means (how sure a probe's pass or fail is), noted when they
# differ; the others (start, budget, tolerance, min/max_value) change only where the brackets land, which
# the interval already shows.
VERDICT_SETTINGS = ("confidence", "max_trials")


@dataclass
class CapacitySide:
    """One side: a capacity search's report and where it was read (a sweep folder, or "run <id>")."""

    label: str
    report: CapacityReport
    run_id: str | None = None  # the sweep's MLflow parent run, when it was read from MLflow

    @classmethod
    def load(cls, path: Path, label: str | None = None, run_id: str | None = None) -> CapacitySide:
        """From ``capacity.json`` or the sweep folder holding it; ``ComparisonError`` (one line) when it
        is not a capacity search's report, so that a damaged file is named instead of a traceback."""
        file = path / CAPACITY_FILE if path.is_dir() else path
        try:
            report = CapacityReport.load(file)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            why = error.strerror if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
            where = f"{label or path} ({CAPACITY_FILE})" if path.is_dir() else (label or str(path))
            raise ComparisonError(f"{where}: not a readable capacity search report ({why})") from None
        return cls(label or str(path), report, run_id)

    @property
    def bracket(self) -> tuple[float, float]:
        """Where the true capacity lies, [low, high), with an open end as 0 or infinity."""
        r = self.report
        return (
            0.0 if r.capacity is None else float(r.capacity),
            math.inf if r.capacity_upper is None else float(r.capacity_upper),
        )


@dataclass
class CapacityComparison:
    baseline: str
    candidate: str
    baseline_run_id: str | None
    candidate_run_id: str | None
    knob: str
    target: float  # slo.attainment
    slo: dict[str, float | None]
    baseline_capacity: float | None  # the brackets, as each search found them (None: open)
    baseline_capacity_upper: float | None
    candidate_capacity: float | None
    candidate_capacity_upper: float | None
    ratio: float | None  # of the brackets' geometric midpoints; None while a bracket is open
    ratio_low: float  # the ratio's interval; 0 when an open end leaves no lower bound
    ratio_high: float  # math.inf when an open end leaves no upper bound
    verdict: str  # better | worse | cannot tell
    reason: str  # which loads the verdict rests on
    stop_reasons: dict[str, str] = field(default_factory=dict)  # side -> why its search stopped
    probes: dict[str, int] = field(default_factory=dict)  # side -> probes decided
    runs: dict[str, int] = field(default_factory=dict)  # side -> runs (every trial)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: an unbounded ``ratio_high`` is null (JSON has no infinity)."""
        data = dict(vars(self))
        data["ratio_high"] = None if math.isinf(self.ratio_high) else self.ratio_high
        return data


def _slo_text(slo: dict[str, float | None], target: float) -> str:
    bounds = [f"slo.{k} <= {v:g}" for k, v in slo.items() if v is not None]
    return f"slo.attainment >= {target:g} of requests meeting {' and '.join(bounds) or 'no bound'}"


def check_same_search(baseline: CapacityReport, candidate: CapacityReport) -> None:
    """Refuse, in one line naming what differs, searches whose capacities measure different things: another
    knob, other SLO bounds or another attainment target."""
    differences = []
    if baseline.knob != candidate.knob:
        differences.append(f"knob ({baseline.knob} vs {candidate.knob})")
    for key in dict.fromkeys([*baseline.slo, *candidate.slo]):
        a, b = baseline.slo.get(key), candidate.slo.get(key)
        if a != b:
            differences.append(
                f"slo.{key} ({'null' if a is None else f'{a:g}'} vs {'null' if b is None else f'{b:g}'})"
            )
    if baseline.target != candidate.target:
        differences.append(f"slo.attainment ({baseline.target:g} vs {candidate.target:g})")
    if differences:
        raise ComparisonError(
            f"the capacity searches differ in {', '.join(differences)}: a capacity holds only for its knob "
            "and SLO, so compare searches of the same ones"
        )


def _check_found(role: str, side: CapacitySide) -> None:
    """Refuse a search that decided no probe (stopped before its first run finished): it has no bracket."""
    r = side.report
    if r.capacity is None and r.capacity_upper is None:
        raise ComparisonError(
            f"{role} {side.label}: the search decided no probe (stopped: "
            f"{r.stop_reason or 'no reason given'}); nothing to compare"
        )


def _midpoint(low: float, high: float) -> float | None:
    return math.sqrt(low * high) if low > 0 and not math.isinf(high) else None


def _open_notes(role: str, side: CapacitySide) -> list[str]:
    """Say which end of the ratio's interval an open bracket leaves unbounded, and why."""
    r, end = side.report, {"baseline": ("high", "low"), "candidate": ("low", "high")}[role]
    notes = []
    if r.capacity is None:
        notes.append(
            f"the {role} held no {r.knob} it probed (down to {r.capacity_upper:g}): its bracket is open "
            f"below, so the ratio's {end[0]} end is {'unbounded' if end[0] == 'high' else '0'}"
        )
    if r.capacity_upper is None:
        notes.append(
            f"the {role} held every {r.knob} it probed (up to {r.capacity:g}): its bracket is open above, "
            f"so the ratio's {end[1]} end is {'unbounded' if end[1] == 'high' else '0'}"
        )
    return notes


def _unsure_upper(role: str, side: CapacitySide) -> str | None:
    """A bracket whose upper end was ``unsure`` (not shown to fail) is weaker than one that failed."""
    r = side.report
    probe = next((p for p in r.probes if p.value == r.capacity_upper and p.verdict == "unsure"), None)
    if probe is None:
        return None
    return (
        f"{role} {side.label}: its upper end {r.knob}={probe.value:g} was unsure (its attainment's interval "
        f"still straddled {r.target:g} after {probe.trials} trial{'' if probe.trials == 1 else 's'}): "
        "its capacity may lie at or above it"
    )


def _override_notes(baseline: list[str], candidate: list[str]) -> list[str]:
    """What the two searches were told differently on the command line (the change under test, or a
    mistake: another model or workload)."""
    from rosebench.overrides import override_values

    a, b = override_values(baseline), override_values(candidate)
    return [
        f"the searches' command lines differ: {key} = {a.get(key, '(unset)')} vs {b.get(key, '(unset)')}"
        for key in dict.fromkeys([*a, *b])
        if a.get(key) != b.get(key) and key != "tracking.uri"
    ]


def compare_capacity(baseline: CapacitySide, candidate: CapacitySide) -> CapacityComparison:
    """The ratio of the candidate's capacity to the baseline's, its interval from the two brackets and a
    verdict; ``ComparisonError`` when the searches differ in knob or SLO, or one found no bracket."""
    check_same_search(baseline.report, candidate.report)
    sides = dict(zip(SIDES, (baseline, candidate)))
    for role, side in sides.items():
        _check_found(role, side)
    (b_low, b_high), (c_low, c_high) = baseline.bracket, candidate.bracket
    low = c_low / b_high  # 0 when either is open: c_low == 0 or b_high == inf
    high = math.inf if b_low == 0 or math.isinf(c_high) else c_high / b_low
    midpoints = _midpoint(b_low, b_high), _midpoint(c_low, c_high)
    ratio = midpoints[1] / midpoints[0] if None not in midpoints else None
    knob = baseline.report.knob
    if low >= 1:
        verdict, reason = (
            "better",
            f"the candidate held {knob}={c_low:g}, the baseline did not hold {b_high:g}",
        )
    elif high <= 1:
        verdict, reason = (
            "worse",
            f"the candidate did not hold {knob}={c_high:g}, the baseline held {b_low:g}",
        )
    else:
        verdict, reason = "cannot tell", "the brackets overlap"
    notes = [note for role, side in sides.items() for note in _open_notes(role, side)]
    settings = baseline.report.settings, candidate.report.settings
    notes += [
        f"settings differ: hydra.sweeper.{k} = {settings[0].get(k)} vs {settings[1].get(k)} (what a probe "
        "needs to pass or fail)"
        for k in VERDICT_SETTINGS
        if settings[0].get(k) != settings[1].get(k)
    ]
    notes += _override_notes(baseline.report.overrides, candidate.report.overrides)
    warnings = [w for role, side in sides.items() if (w := _unsure_upper(role, side)) is not None]
    return CapacityComparison(
        baseline=baseline.label,
        candidate=candidate.label,
        baseline_run_id=baseline.run_id,
        candidate_run_id=candidate.run_id,
        knob=knob,
        target=baseline.report.target,
        slo=dict(baseline.report.slo),
        baseline_capacity=baseline.report.capacity,
        baseline_capacity_upper=baseline.report.capacity_upper,
        candidate_capacity=candidate.report.capacity,
        candidate_capacity_upper=candidate.report.capacity_upper,
        ratio=ratio,
        ratio_low=low,
        ratio_high=high,
        verdict=verdict,
        reason=reason,
        stop_reasons={role: side.report.stop_reason for role, side in sides.items()},
        probes={role: len(side.report.probes) for role, side in sides.items()},
        runs={role: sum(p.trials for p in side.report.probes) for role, side in sides.items()},
        notes=notes,
        warnings=warnings,
    )


# -- --fail-if-worse --------------------------------------------------------------------------------------
def worse_than(c: CapacityComparison, pct: float) -> tuple[bool, str]:
    """Whether the candidate's capacity is shown lower than the baseline's by more than ``pct`` percent,
    and the line that says why either way.

    Fails when high <= 1 - pct/100: the true ratio lies below high (the candidate did not hold its upper
    end, the baseline held its lower), so it is then below the bound, as "worse" is at pct = 0. Raises
    ``ComparisonError`` when the interval has no upper bound and does not clear the bound either: no
    candidate could ever fail such a gate, and a gate that cannot fail must not pass.
    """
    bound = 1 - pct / 100
    interval = _interval(c)
    if c.ratio_high <= bound:
        return True, (
            f"capacity worse by more than {pct:g}%: the ratio's interval {interval} lies at or below "
            f"{bound:.3f} ({c.reason})"
        )
    if c.ratio_low >= bound:
        return False, (
            f"capacity not worse by more than {pct:g}%: the ratio's interval {interval} lies at or above "
            f"{bound:.3f}"
        )
    if math.isinf(c.ratio_high):
        why = (
            f"the baseline held no {c.knob} it probed (a lower hydra.sweeper.start or min_value finds one)"
            if c.baseline_capacity is None
            else f"the candidate held every {c.knob} it probed (a larger hydra.sweeper.budget or max_value "
            "closes its bracket)"
        )
        raise ComparisonError(
            f"--fail-if-worse {pct:g}: the capacity ratio's interval {interval} has no upper bound, because "
            f"{why}: no candidate could fail this gate, so it gives no verdict"
        )
    return False, (
        f"capacity not shown worse by more than {pct:g}%: the ratio's interval {interval} reaches above "
        f"{bound:.3f} (the brackets overlap; narrower ones, a smaller hydra.sweeper.tolerance or a larger "
        "budget, may tell)"
    )


# -- output -----------------------------------------------------------------------------------------------
def _value(value: float | None, open_as: str) -> str:
    return open_as if value is None else f"{value:g}"


def _ratio_text(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.3f}"


def _interval(c: CapacityComparison) -> str:
    return f"[{_ratio_text(c.ratio_low)}, {_ratio_text(c.ratio_high)}]"


HEADER = ["side", "holds", "does not hold", "probes", "runs", "stopped"]


def _rows(c: CapacityComparison) -> list[list[str]]:
    brackets = {
        "baseline": (c.baseline_capacity, c.baseline_capacity_upper),
        "candidate": (c.candidate_capacity, c.candidate_capacity_upper),
    }
    return [
        [
            role,
            _value(brackets[role][0], "none"),  # nothing it probed held
            _value(brackets[role][1], "none probed"),  # everything it probed held
            str(c.probes[role]),
            str(c.runs[role]),
            c.stop_reasons[role],
        ]
        for role in SIDES
    ]


def verdict_line(c: CapacityComparison) -> str:
    """``capacity ratio 2.000, interval [1.000, 4.000]: better (the candidate held ...)``."""
    ratio = "-" if c.ratio is None else f"{c.ratio:.3f}"
    return f"capacity ratio {ratio}, interval {_interval(c)}: {c.verdict} ({c.reason})"


def _lines(c: CapacityComparison) -> list[str]:
    return [*c.notes, *(f"warning: {w}" for w in c.warnings)]


def to_text(c: CapacityComparison) -> str:
    rows = [HEADER, *_rows(c)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    out = [
        f"baseline {c.baseline}",
        f"candidate {c.candidate}",
        f"capacity: the highest {c.knob} with {_slo_text(c.slo, c.target)}",
        *("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows),
        verdict_line(c),
        *_lines(c),
    ]
    return "\n".join(out) + "\n"


def to_markdown(c: CapacityComparison) -> str:
    out = [
        f"Baseline `{c.baseline}`, candidate `{c.candidate}`: the highest `{c.knob}` with "
        f"{_slo_text(c.slo, c.target)}\n",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in _rows(c)),
        f"\n**{verdict_line(c)}**",
        *(f"\n- {line}" for line in _lines(c)),
    ]
    return "\n".join(out) + "\n"


def to_json(c: CapacityComparison) -> str:
    data = {"method": __doc__.split("\n\n")[1].replace("\n", " "), "capacity": c.to_dict()}
    return json.dumps(data, indent=2) + "\n"


def not_applicable(options: Sequence[str]) -> str:
    """The one line refusing run-comparison options given with capacity searches."""
    return (
        f"{', '.join(options)}: not applicable to capacity searches (they compare by their brackets alone: "
        "no bootstrap, no metric to pick, no run config checked)"
    )
