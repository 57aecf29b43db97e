"""What else ran on the machine during a timed pass. On a shared 2-core machine one busy neighbour made the
default 2 threads 2.5x slower (21x under heavier load) while nothing in the run said so: a run must know.

During each timed pass ``ConditionsProbe`` measures:
- ``contention``: the CPU time the rest of the machine used on the cores this process may run on (their
  busy time, from the kernel's per-core counters, minus this process tree's own CPU time), as a share of
  those cores' time over the pass. The per-core counters tick at 100 Hz, so the figure is a lower bound:
  ``RESOLUTION_TICKS`` per core are taken off before it is divided, and a quiet machine reads 0.
- ``cpu_steal``: time a hypervisor gave to other machines, as a share of the same (Linux).
- ``load_avg_1m``: the 1-minute load average at the pass's end (this run's own threads included).
- ``torch_threads``: the intra-op threads torch used.

A run is contended when a pass's contention exceeds ``CONTENDED_SHARE``; it is oversubscribed when torch's
threads outnumber the cores the others left free (spinning OpenMP threads then wait on each other).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import psutil
import torch

CONTENDED_SHARE = 0.10  # other processes used more than 10% of the run's cores during a timed pass
RESOLUTION_TICKS = 2  # per core: two readings of counters that advance in whole clock ticks
_CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_IDLE_FIELDS = ("idle", "iowait", "steal", "guest", "guest_nice")  # guest time is counted in user already


def cores() -> list[int]:
    """The cores this process may run on (a container or ``taskset`` may allow fewer than the machine has)."""
    try:
        return psutil.Process().cpu_affinity() or list(range(psutil.cpu_count() or 1))
    except (AttributeError, psutil.Error):  # no affinity on macOS
        return list(range(psutil.cpu_count() or 1))


def machine_busy_s(indices: list[int]) -> float:
    """Busy seconds of the cores ``indices`` since boot (every process's), from the kernel's counters."""
    return _machine_busy_and_steal_s(indices)[0]


def _machine_busy_and_steal_s(indices: list[int]) -> tuple[float, float]:
    """Busy and steal seconds of the cores ``indices`` since boot, from the kernel's per-core counters."""
    per_core = psutil.cpu_times(percpu=True)
    busy = steal = 0.0
    for index in indices:
        times = per_core[index]._asdict()
        busy += sum(times.values()) - sum(times.get(name, 0.0) for name in _IDLE_FIELDS)
        steal += times.get("steal", 0.0)
    return busy, steal


def _own_cpu_s() -> float:
    """CPU seconds of this process (every thread, nanosecond clock) and of its children, live or ended."""
    children = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # ended meanwhile: counted in os.times()'s children once reaped
            continue
        children += times.user + times.system
    ended = os.times()
    return time.process_time() + children + ended.children_user + ended.children_system


@dataclass
class PassConditions:
    other_cpu_s: float  # CPU seconds the rest of the machine used on the run's cores (a lower bound)
    contention: float  # that, as a share of those cores' time over the pass
    cpu_steal: float
    load_avg_1m: float
    torch_threads: int | None  # the measured engine's intra-op threads; None for a remote server's
    cores: int

    def metrics(self) -> dict[str, float]:
        """The pass's figures under their results.json names (a figure not known is left out)."""
        return {name: float(value) for name, value in asdict(self).items() if value is not None}


class ConditionsProbe:
    """``with ConditionsProbe() as probe: <pass>``, then ``probe.conditions``. ``engine_threads`` tells the
    intra-op threads of the engine measured: this process's by default; a local server's, or None for a
    remote one (this machine's cores say nothing of it)."""

    def __init__(self, engine_threads: Callable[[], int | None] = torch.get_num_threads) -> None:
        self._engine_threads = engine_threads

    def __enter__(self) -> ConditionsProbe:
        self._cores = cores()
        self._busy, self._steal = _machine_busy_and_steal_s(self._cores)
        self._own = _own_cpu_s()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall_s = time.perf_counter() - self._start
        busy, steal = _machine_busy_and_steal_s(self._cores)
        own = _own_cpu_s() - self._own
        capacity_s = max(wall_s * len(self._cores), 1e-9)
        other_s = busy - self._busy - own - RESOLUTION_TICKS * len(self._cores) * _CLOCK_TICK_S
        other_s = max(other_s, 0.0)
        self.conditions = PassConditions(
            other_cpu_s=other_s,
            contention=min(other_s / capacity_s, 1.0),
            cpu_steal=min(max((steal - self._steal) / capacity_s, 0.0), 1.0),
            load_avg_1m=os.getloadavg()[0],
            torch_threads=self._engine_threads(),
            cores=len(self._cores),
        )


def contention_warnings(passes: list[dict[str, float]]) -> list[str]:
    """One line when the busiest timed pass crossed ``CONTENDED_SHARE``, and one more when torch's threads
    outnumbered the cores left free then; none on a quiet machine."""
    if not passes or "contention" not in passes[0]:  # results from before contention was measured
        return []
    number, busiest = max(enumerate(passes, start=1), key=lambda item: item[1]["contention"])
    share, n_cores = busiest["contention"], busiest["cores"]
    if share <= CONTENDED_SHARE:
        return []
    lines = [
        f"the machine was busy: other processes used {share:.0%} of the {n_cores:.0f} cores during timed "
        f"pass {number} (contention_max {share:.2f} > {CONTENDED_SHARE:.2f}); these figures understate the "
        "engine and are tagged contended=yes"
    ]
    threads, free = busiest.get("torch_threads"), n_cores * (1 - share)
    if threads is not None and threads > free:
        lines.append(
            f"torch ran {threads:.0f} intra-op threads with {free:.1f} of {n_cores:.0f} cores left free: "
            "oversubscribed, its threads wait on each other (engine.num_threads sets fewer)"
        )
    return lines


def contended(metrics: Mapping[str, float]) -> bool | None:
    """Whether the busiest timed pass (the run's ``contention_max``) ran on a busy machine; None when no pass
    measured it."""
    share = metrics.get("contention_max")
    return None if share is None else share > CONTENDED_SHARE
