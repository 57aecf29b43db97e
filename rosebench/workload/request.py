"""What a workload hands to a scheduler: token ids, sampling and an arrival time."""

from __future__ import annotations

from dataclasses import dataclass

from rosebench.engine.sequence import SamplingParams


@dataclass(frozen=True)
class Request:
    """One benchmark request. ``arrival_s`` is an offset from the start of the pass (0 = at once)."""

    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_s: float = 0.0
    prompt_text: str | None = None
