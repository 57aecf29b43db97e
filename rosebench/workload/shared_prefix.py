"""Groups of prompts that share a long prefix: the workload that exercises the prefix cache."""

from __future__ import annotations

import random

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt
from rosebench.workload.random_tokens import random_token_ids


def shared_prefix_prompts(
    num_requests: int,
    *,
    seed: int,
    num_prefixes: int = 4,
    prefix_len: int = 256,
    suffix_len: int = 32,
) -> list[Prompt]:
    """``num_prefixes`` random prefixes of ``prefix_len`` ids, each followed by ``suffix_len`` random ids.

    Requests take prefixes round-robin (request i uses prefix i % num_prefixes), so consecutive requests
    differ and a cache must keep several prefixes alive to hit. Suffixes under one prefix are distinct.
    """
    if num_prefixes < 1 or prefix_len < 1 or suffix_len < 1:
        raise WorkloadError(
            f"shared_prefix workload: num_prefixes={num_prefixes}, prefix_len={prefix_len}, "
            f"suffix_len={suffix_len}: all must be >= 1"
        )
    rng = random.Random(seed)
    prefixes = [random_token_ids(rng, prefix_len) for _ in range(num_prefixes)]
    seen: set[tuple[int, ...]] = set()
    prompts = []
    for i in range(num_requests):
        p = i % num_prefixes
        suffix = random_token_ids(rng, suffix_len)
        while (p, *suffix) in seen:  # a repeated prompt would be a full-prompt cache hit; redraw (rare)
            suffix = random_token_ids(rng, suffix_len)
        seen.add((p, *suffix))
        prompts.append(Prompt(token_ids=prefixes[p] + suffix))
    return prompts
