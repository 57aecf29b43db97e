"""Random token prompts with spread-out lengths, as vLLM's random dataset."""

from __future__ import annotations

import math
import random

from rosebench.engine.tokenizer import EOS_TOKEN_ID
from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt


def random_token_ids(rng: random.Random, length: int) -> list[int]:
    """``length`` ids uniform in [0, EOS_TOKEN_ID): ordinary tokens only, as in real prompt text."""
    return rng.choices(range(EOS_TOKEN_ID), k=length)


def length_bounds(length: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive [floor(len * (1 - r)), ceil(len * (1 + r))], at least 1 (vLLM's rule)."""
    low = max(1, math.floor(length * (1 - range_ratio)))
    return low, math.ceil(length * (1 + range_ratio))


def random_prompts(
    num_requests: int,
    *,
    seed: int,
    default_output_len: int,
    input_len: int = 128,
    output_len: int | None = None,
    range_ratio: float = 0.0,
) -> list[Prompt]:
    """Prompts of random ids; each length is uniform within ``length_bounds`` of its target.

    ``output_len`` (``None``: ``default_output_len``) sets each prompt's ``max_new_tokens``.
    """
    output_len = default_output_len if output_len is None else output_len
    if input_len < 1 or output_len < 1:
        raise WorkloadError(f"random workload: input_len={input_len}, output_len={output_len}: must be >= 1")
    if not 0.0 <= range_ratio < 1.0:
        raise WorkloadError(f"random workload: range_ratio={range_ratio}: must be in [0, 1)")
    rng = random.Random(seed)
    in_bounds, out_bounds = length_bounds(input_len, range_ratio), length_bounds(output_len, range_ratio)
    prompts = []
    for _ in range(num_requests):
        ids = random_token_ids(rng, rng.randint(*in_bounds))
        prompts.append(Prompt(token_ids=ids, max_new_tokens=rng.randint(*out_bounds)))
    return prompts
