"""Service-level objectives: latency bounds a request must meet to count towards goodput (DistServe's
definition, as vLLM's ``bench serve --goodput`` computes it). No torch: the runner's config node."""

from __future__ import annotations

import math
from dataclasses import dataclass

BOUNDS = ("ttft_ms", "tpot_ms", "e2e_ms")


@dataclass
class SloConfig:
    """The runner's ``slo`` node: each bound in ms (null = no bound) and the share of requests that must
    meet every bound (a capacity search's target)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    attainment: float = 0.99

    def __post_init__(self) -> None:
        for name in BOUNDS:
            bound = getattr(self, name)
            if bound is not None and not 0 < bound < math.inf:
                raise ValueError(f"slo.{name}={bound}: must be a finite number of ms > 0, or null (no bound)")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"slo.attainment={self.attainment}: must be in (0, 1] (0.99 = 99% of requests)")

    @property
    def bounded(self) -> bool:
        """Whether any bound is set (without one there is no goodput to compute)."""
        return any(getattr(self, name) is not None for name in BOUNDS)

    def met(self, ttft_ms: float, tpot_ms: float | None, e2e_ms: float) -> bool:
        """Whether one request's latencies meet every bound (inclusive, as vLLM's). A request with one
        output token has no TPOT: that bound cannot fail it."""
        figures = {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "e2e_ms": e2e_ms}
        for name in BOUNDS:
            bound, figure = getattr(self, name), figures[name]
            if bound is not None and figure is not None and figure > bound:
                return False
        return True
