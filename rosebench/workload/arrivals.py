"""Request arrival times: all at once, Poisson, or gamma-distributed bursts (as vLLM's bench serve)."""

from __future__ import annotations

import math
import random


def arrival_times(n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Return ``n`` non-decreasing arrival offsets in seconds.

    ``request_rate`` is requests per second (``inf``: everything arrives at 0). Gaps between arrivals are
    gamma-distributed with shape ``burstiness`` and mean ``1 / request_rate``: 1 is a Poisson process,
    below 1 burstier, above 1 more regular. The first request arrives after its own gap. Both values come
    checked from ``SchedulerConfig``.
    """
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    scale = 1.0 / (request_rate * burstiness)  # gamma mean = shape * scale = 1 / rate
    times, t = [], 0.0
    for _ in range(n):
        t += rng.gammavariate(burstiness, scale)
        times.append(t)
    return times
