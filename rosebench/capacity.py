"""How much load does it hold? A search for the highest value of a load knob whose SLO attainment holds.

The search brackets by doubling (or halving) from a start value, then bisects until the bracket is within a
relative tolerance or the run budget is spent, as MLPerf LoadGen's Server scenario searches its query rate.
A probe's verdict is statistical: its requests, pooled over its trials, give a Wilson score interval for the
attainment; the probe passes when the whole interval reaches the target, fails when it lies below, and is
run again (another ``trial``) while the interval straddles it; still straddling after ``max_trials``, it is
``unsure`` and counts as not passing. The answer is the bracket: the highest value shown to hold and the
lowest one not shown to hold.

Pure logic (no Hydra, no MLflow): the ``hydra/sweeper=capacity`` plugin (``hydra_plugins/``) runs the
probes, ``rosebench.tracking`` logs the report, ``rosebench.compare`` compares two.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

from rosebench.files import write_atomic

CAPACITY_FILE = "capacity.json"  # in the sweep folder
# The knobs a search can move, and the unit their capacity metrics are named by.
KNOBS: dict[str, str] = {"scheduler.request_rate": "req_s", "scheduler.max_concurrency": "concurrency"}
INTEGER_KNOBS = ("scheduler.max_concurrency",)
VERDICTS = ("pass", "fail", "unsure")


@dataclass
class CapacitySettings:
    """The sweeper's settings (``hydra.sweeper.*``), checked on creation."""

    knob: str = "scheduler.request_rate"
    start: float = 1.0  # the first probe's value
    tolerance: float = (
        0.05  # stop when (upper - lower) <= tolerance * lower (integer knobs: upper - lower <= 1)
    )
    budget: int = 12  # runs in all; every trial counts
    max_trials: int = 3  # runs at one value while its attainment's interval straddles the target
    confidence: float = 0.95  # of the two-sided Wilson interval on the pooled attainment
    min_value: float | None = None  # give up below it; null = start / 64 (1 for an integer knob)
    max_value: float | None = None  # never probe above it; null = no ceiling (the budget ends the search)

    def __post_init__(self) -> None:
        def fail(key: str, rule: str) -> ValueError:
            return ValueError(f"hydra.sweeper.{key}={getattr(self, key)}: {rule}")

        if self.knob not in KNOBS:
            raise fail("knob", f"not a load knob the search can move (allowed: {', '.join(KNOBS)})")
        if not 0 < self.start < math.inf:
            raise fail("start", "must be a finite number > 0")
        if self.integer and self.start != int(self.start):
            raise fail("start", f"{self.knob} is an integer: start must be one")
        if not 0 < self.tolerance < 1:
            raise fail("tolerance", "must be in (0, 1) (0.05 = stop when the bracket is within 5%)")
        if self.budget < 1:
            raise fail("budget", "must be >= 1 (the runs the search may launch, every trial counted)")
        if self.max_trials < 1:
            raise fail("max_trials", "must be >= 1")
        if not 0 < self.confidence < 1:
            raise fail("confidence", "must be in (0, 1) (0.95 = a 95% interval)")
        if self.min_value is not None and not 0 < self.min_value <= self.start:
            raise fail("min_value", f"must be > 0 and <= hydra.sweeper.start={self.start}, or null")
        if self.max_value is not None and not self.start <= self.max_value < math.inf:
            raise fail("max_value", f"must be finite and >= hydra.sweeper.start={self.start}, or null")

    @property
    def integer(self) -> bool:
        return self.knob in INTEGER_KNOBS

    @property
    def floor(self) -> float:
        """The lowest value the search probes."""
        if self.min_value is not None:
            return self.min_value
        return 1 if self.integer else self.start / 64

    def requests_needed(self, target: float) -> int | None:
        """The fewest pooled requests, all meeting the SLO, whose interval reaches ``target``; None when no
        number does (a target of 1: an interval's lower end never reaches it)."""
        if target >= 1:
            return None
        return math.ceil(target * _z(self.confidence) ** 2 / (1 - target))


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def attainment_interval(met: int, requests: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of ``met / requests``: honest at 0 and 1, where a normal interval collapses."""
    if requests <= 0:
        return 0.0, 1.0
    z, p = _z(confidence), met / requests
    denominator = 1 + z * z / requests
    centre = (p + z * z / (2 * requests)) / denominator
    half = z * math.sqrt(p * (1 - p) / requests + z * z / (4 * requests * requests)) / denominator
    # At 0 and 1 the formula's end is exactly 0 or 1; rounding must not move it.
    low = 0.0 if met == 0 else max(0.0, centre - half)
    return low, 1.0 if met == requests else min(1.0, centre + half)


@dataclass
class Probe:
    """One knob value: its trials' runs and their pooled requests."""

    value: float
    trials: int = 0
    met: int = 0  # pooled requests that met every bound
    requests: int = 0  # pooled requests
    interval: tuple[float, float] = (0.0, 1.0)
    verdict: str = "pending"  # pass | fail | unsure once decided
    runs: list[str] = field(default_factory=list)  # the trials' run folders
    contended_runs: int = 0  # trials whose timed passes shared the machine with busy processes

    @property
    def attainment(self) -> float | None:
        return self.met / self.requests if self.requests else None

    @property
    def decided(self) -> bool:
        return self.verdict in VERDICTS


class CapacitySearch:
    """Chooses the next knob value from the verdicts so far.

    Invariant: ``lower`` (the highest value that passed) < ``upper`` (the lowest that did not) whenever both
    exist, and every new probe lies strictly between them; ``runs`` never exceeds the budget. Call
    ``next_value`` until it returns None (``stop_reason`` then says why), recording each run in between.
    """

    def __init__(self, settings: CapacitySettings, target: float) -> None:
        self.settings, self.target = settings, target
        self.probes: list[Probe] = []
        self.lower: float | None = None
        self.upper: float | None = None
        self.runs = 0
        self.stop_reason: str | None = None

    @property
    def current(self) -> Probe | None:
        return self.probes[-1] if self.probes else None

    def next_value(self) -> float | None:
        """The value of the next run (the current probe's again while it is undecided), or None: done."""
        if self.stop_reason is not None:
            return None
        probe = self.current
        if probe is not None and not probe.decided:
            if self.runs < self.settings.budget:
                return probe.value
            self._decide(probe, "unsure")
        if self.runs >= self.settings.budget:
            return self._stop(f"the budget of {self.settings.budget} runs is spent")
        value = self._next_probe_value()
        if value is not None:
            self.probes.append(Probe(value))
        return value

    def record(self, met: int, requests: int, run: str = "", contended: bool = False) -> Probe:
        """One run of the current probe: ``met`` of its ``requests`` met every bound (``contended``: while
        other processes were busy, which makes a verdict say more about them than about the target)."""
        probe = self.current
        if probe is None or probe.decided:
            raise RuntimeError("record: no probe is waiting for a run (call next_value first)")
        self.runs += 1
        probe.trials += 1
        probe.met += met
        probe.requests += requests
        probe.runs.append(run)
        probe.contended_runs += contended
        probe.interval = attainment_interval(probe.met, probe.requests, self.settings.confidence)
        low, high = probe.interval
        if low >= self.target:
            self._decide(probe, "pass")
        elif high < self.target:
            self._decide(probe, "fail")
        elif probe.trials >= self.settings.max_trials:
            self._decide(probe, "unsure")
        return probe

    def _decide(self, probe: Probe, verdict: str) -> None:
        probe.verdict = verdict
        if verdict == "pass":
            self.lower = probe.value
        else:
            self.upper = probe.value

    def _next_probe_value(self) -> float | None:
        s = self.settings
        if not self.probes:
            return self._round(s.start)
        if self.lower is None:  # nothing has held yet: halve
            assert self.upper is not None
            value = self._round(self.upper / 2)
            if value < s.floor or value >= self.upper:
                return self._stop(f"the target is not met even at {self.upper:g} (the lowest value probed)")
            return value
        if self.upper is None:  # everything has held: double, up to the ceiling
            value = self._round(self.lower * 2)
            if s.max_value is not None and value > s.max_value:
                if self.lower >= s.max_value:
                    return self._stop(f"the target is met up to hydra.sweeper.max_value={s.max_value:g}")
                value = s.max_value
            return value
        value = self._round((self.lower + self.upper) / 2)
        narrow = self.upper - self.lower <= (1 if s.integer else s.tolerance * self.lower)
        if narrow or not self.lower < value < self.upper:
            return self._stop(f"the bracket is within {'1' if s.integer else f'{s.tolerance:.0%}'}")
        return value

    def _round(self, value: float) -> float:
        """Values as a user types them: integers for an integer knob, else three significant digits."""
        return float(math.floor(value)) if self.settings.integer else float(f"{value:.3g}")

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        return None


@dataclass
class CapacityReport:
    """What a search found, saved beside its runs as ``capacity.json`` (and logged on the sweep's parent)."""

    knob: str
    target: float  # slo.attainment
    slo: dict[str, float | None]  # the bounds
    settings: dict[str, Any]
    probes: list[Probe]  # in the order they ran
    capacity: float | None  # the highest value that passed; None: none did
    capacity_upper: float | None  # the lowest value that did not pass; None: all did
    stop_reason: str
    overrides: list[str] = field(default_factory=list)  # the command line's (secrets out): what was searched

    @classmethod
    def of(
        cls,
        search: CapacitySearch,
        slo: dict[str, float | None],
        stop_reason: str,
        overrides: list[str] | None = None,
    ) -> CapacityReport:
        return cls(
            knob=search.settings.knob,
            target=search.target,
            slo=slo,
            settings=asdict(search.settings),
            probes=list(search.probes),
            capacity=search.lower,
            capacity_upper=search.upper,
            stop_reason=stop_reason,
            overrides=list(overrides or []),
        )

    @property
    def unit(self) -> str:
        return KNOBS[self.knob]

    def metrics(self) -> dict[str, float]:
        """``capacity_req_s`` and ``capacity_upper_req_s`` (for a rate; named by the knob's unit), as far as
        the search found them."""
        figures = {f"capacity_{self.unit}": self.capacity, f"capacity_upper_{self.unit}": self.capacity_upper}
        return {name: float(value) for name, value in figures.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for probe, saved in zip(self.probes, data["probes"]):
            saved["attainment"] = probe.attainment
        return data

    def save(self, sweep_dir: Path) -> Path:
        path = sweep_dir / CAPACITY_FILE
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> CapacityReport:
        """From ``capacity.json`` or the sweep folder holding it."""
        if path.is_dir():
            path = path / CAPACITY_FILE
        data = json.loads(path.read_text())
        probes = []
        for saved in data.pop("probes"):
            saved.pop("attainment", None)
            saved["interval"] = tuple(saved["interval"])
            probes.append(Probe(**saved))
        return cls(probes=probes, **data)

    def summary(self) -> str:
        """The probes in order and the bracket, as the console shows them."""
        lines = [
            f"{'probe':>5}  {self.knob:>24}  {'trials':>6}  {'met/requests':>13}  {'interval':>15}  verdict"
        ]
        for number, p in enumerate(self.probes, start=1):
            low, high = p.interval
            busy = f" ({p.contended_runs} contended)" if p.contended_runs else ""
            lines.append(
                f"{number:>5}  {p.value:>24g}  {p.trials:>6}  {f'{p.met}/{p.requests}':>13}  "
                f"{f'[{low:.3f}, {high:.3f}]':>15}  {p.verdict}{busy}"
            )
        lines.append(f"capacity: {self.bracket_text()}; stopped: {self.stop_reason}")
        if any(p.contended_runs for p in self.probes):
            lines.append(
                "warning: some probes ran while other processes were busy (results.json run.contended): "
                "their verdicts may say more about the machine than about the engine; search on a quiet one"
            )
        return "\n".join(lines)

    def bracket_text(self) -> str:
        """``scheduler.request_rate=4 holds, 4.5 does not (slo.attainment >= 0.99)``."""
        target = f"(slo.attainment >= {self.target:g})"
        if self.capacity is None:
            return f"no {self.knob} probed holds, {self.capacity_upper:g} does not {target}"
        if self.capacity_upper is None:
            return f"{self.knob}={self.capacity:g} holds, no higher value was probed {target}"
        return f"{self.knob}={self.capacity:g} holds, {self.capacity_upper:g} does not {target}"
