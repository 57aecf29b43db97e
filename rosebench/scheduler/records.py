"""What a scheduler pass records: per-request timestamps and per-step engine figures.

All times are seconds from the start of the pass (``time.perf_counter`` after a device sync), so that
a request's TTFT is ``first_token_s - arrival_s`` whatever moment it was handed to the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    request_id: int
    prompt_token_ids: list[int]
    arrival_s: float
    output_token_ids: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)  # one per output token, the first included
    scheduled_s: float | None = None  # first admission into the running batch
    finish_s: float | None = None
    finish_reason: str | None = None  # "length" | "stop"
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    num_preemptions: int = 0

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None


@dataclass
class PassStats:
    elapsed_total_s: float = 0.0
    elapsed_prefill_s: float = 0.0
    elapsed_decode_s: float = 0.0
    decode_step_s: list[float] = field(default_factory=list)
    decode_batch_sizes: list[int] = field(default_factory=list)
    prefill_steps: int = 0
    preemptions: int = 0
    peak_kv_blocks: int = 0
    kv_capacity_blocks: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens served from cache
    peak_rss_mb: float | None = None
    cuda_max_allocated_mb: float | None = None
    cuda_max_reserved_mb: float | None = None


@dataclass
class PassResult:
    records: list[RequestRecord]
    stats: PassStats
