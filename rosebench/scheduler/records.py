"""What a scheduler pass records: per-request timestamps and per-step engine figures.

All times are seconds from the start of the pass (``time.perf_counter`` after a device sync), so that
a request's TTFT is ``first_token_s - arrival_s`` whatever moment it was handed to the scheduler.

The HTTP client (rosebench/target) fills the same records: ``arrival_s`` is when the request was sent,
``token_times_s`` has one entry per chunk that carried content (a chunk may carry several tokens, so the
count is ``completion_tokens``), and the engine's own figures it cannot see are None in ``PassStats``.
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
    completion_tokens: int | None = None  # a server's count (its usage); None = len(output_token_ids)
    error: str | None = None  # why the request failed (over HTTP); a failed request has no figures

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def num_completion_tokens(self) -> int:
        return len(self.output_token_ids) if self.completion_tokens is None else self.completion_tokens


@dataclass
class PassStats:
    """A pass's figures. The engine's own ones are None where the pass could not see the engine (over HTTP):
    a figure with no samples is absent from the metrics, never 0."""

    elapsed_total_s: float = 0.0
    elapsed_prefill_s: float | None = 0.0
    elapsed_decode_s: float | None = 0.0
    decode_step_s: list[float] = field(default_factory=list)
    decode_batch_sizes: list[int] = field(default_factory=list)
    prefill_steps: int = 0
    preemptions: int | None = 0
    peak_kv_blocks: int | None = 0
    kv_capacity_blocks: int | None = 0
    prefix_cache_queries: int | None = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int | None = 0  # of those, tokens served from cache
    peak_rss_mb: float | None = None
    cuda_max_allocated_mb: float | None = None
    cuda_max_reserved_mb: float | None = None


@dataclass
class PassResult:
    records: list[RequestRecord]
    stats: PassStats
