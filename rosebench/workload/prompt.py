"""What a workload kind produces before arrival times and sampling are attached."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rosebench.workload.errors import WorkloadError


@dataclass(frozen=True)
class Prompt:
    """Prompt ids, plus an optional per-prompt output length and source text."""

    token_ids: list[int]
    max_new_tokens: int | None = None  # None: the run's default
    text: str | None = None


@dataclass(frozen=True)
class Vocabulary:
    """The token ids the model has, ``[0, size)``: every prompt id must be one of them (an id beyond them
    has no embedding row). ``source`` names the setting the size comes from, for messages."""

    size: int
    source: str = "the model"
    # Random prompts draw ids below this too: the tokenizer's ordinary tokens. None = GPT-2's, the ids
    # below <|endoftext|>.
    draw_below: int | None = None

    def first_outside(self, ids: Iterable[int]) -> int | None:
        return next((t for t in ids if not 0 <= t < self.size), None)

    def describe(self) -> str:
        return f"the model's vocabulary: {self.source}, {self.size} ids"


def check_kind(kind: str, expected: str) -> None:
    """A kind's dataclass holds only that kind: another kind is chosen with ``workload=KIND``."""
    if kind != expected:
        raise WorkloadError(
            f"workload.kind={kind}: this is the {expected} workload; switch with workload={kind}"
        )


def check_at_least_one(**values: int | None) -> None:
    for key, value in values.items():
        if value is not None and value < 1:
            raise WorkloadError(f"workload.{key}={value}: must be >= 1")
