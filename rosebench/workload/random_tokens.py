"""Random token prompts with spread-out lengths, as vLLM's random dataset."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import tiktoken

from rosebench.engine.config import EOS_TOKEN_ID
from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, check_at_least_one, check_kind


def random_token_ids(rng: random.Random, length: int) -> list[int]:
    """``length`` ids uniform in [0, EOS_TOKEN_ID): ordinary tokens only, as in real prompt text."""
    return rng.choices(range(EOS_TOKEN_ID), k=length)


def length_bounds(length: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive [floor(len * (1 - r)), ceil(len * (1 + r))], at least 1 (vLLM's rule)."""
    low = max(1, math.floor(length * (1 - range_ratio)))
    return low, math.ceil(length * (1 + range_ratio))


@dataclass
class RandomWorkload:
    """Prompts of random ids, as vLLM's random dataset; each length is uniform within ``length_bounds``
    of its target, and ``output_len`` (None: the run's ``max_new_tokens``) sets each one's output."""

    kind: str = "random"
    input_len: int = 128
    output_len: int | None = None
    range_ratio: float = 0.0  # lengths uniform in [len * (1 - r), len * (1 + r)]

    def __post_init__(self) -> None:
        check_kind(self.kind, "random")
        check_at_least_one(input_len=self.input_len, output_len=self.output_len)
        if not 0.0 <= self.range_ratio < 1.0:
            raise WorkloadError(f"workload.range_ratio={self.range_ratio}: must be in [0, 1)")

    def prompts(
        self, num_requests: int, tokenizer: tiktoken.Encoding, seed: int, max_new_tokens: int
    ) -> list[Prompt]:
        output_len = max_new_tokens if self.output_len is None else self.output_len
        rng = random.Random(seed)
        in_bounds = length_bounds(self.input_len, self.range_ratio)
        out_bounds = length_bounds(output_len, self.range_ratio)
        prompts = []
        for _ in range(num_requests):
            ids = random_token_ids(rng, rng.randint(*in_bounds))
            prompts.append(Prompt(token_ids=ids, max_new_tokens=rng.randint(*out_bounds)))
        return prompts
