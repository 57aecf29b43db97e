"""The schedulers' settings (also the runner's ``scheduler`` config node): no torch, checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class SchedulerConfig:
    max_batch_size: int = 16
    max_batched_tokens: int = 2048  # prompt tokens per prefill step
    request_rate: float = math.inf  # requests/s for the online arrival process; inf = all at once
    burstiness: float = 1.0  # gamma shape of the inter-arrival gaps; 1 = Poisson
    max_concurrency: int | None = None  # requests in flight at once (online), as vLLM's bench serve

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"scheduler.max_batch_size={self.max_batch_size}: must be >= 1")
        if self.max_batched_tokens < 1:
            raise ValueError(f"scheduler.max_batched_tokens={self.max_batched_tokens}: must be >= 1")
        if not self.request_rate > 0:
            raise ValueError(f"scheduler.request_rate={self.request_rate}: must be > 0 (inf = all at once)")
        if not 0 < self.burstiness < math.inf:
            raise ValueError(f"scheduler.burstiness={self.burstiness}: must be finite and > 0 (1 = Poisson)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"scheduler.max_concurrency={self.max_concurrency}: must be >= 1 or null")
