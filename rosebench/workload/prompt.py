"""What a workload kind produces before arrival times and sampling are attached."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """Prompt ids, plus an optional per-prompt output length and source text."""

    token_ids: list[int]
    max_new_tokens: int | None = None  # None: the run's default
    text: str | None = None
