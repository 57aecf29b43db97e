"""One entry point from a workload config to the list of requests a scheduler pass runs."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import tiktoken

from rosebench.engine.sequence import SamplingParams
from rosebench.workload.arrivals import arrival_times
from rosebench.workload.errors import WorkloadError
from rosebench.workload.fixed import fixed_prompts
from rosebench.workload.jsonl import jsonl_prompts
from rosebench.workload.prompt import Prompt
from rosebench.workload.random_tokens import random_prompts
from rosebench.workload.request import Request
from rosebench.workload.shared_prefix import shared_prefix_prompts

# The options each kind accepts (its config keys); defaults live in the kind's function.
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "fixed": ("prompt",),
    "random": ("input_len", "output_len", "range_ratio"),
    "shared_prefix": ("num_prefixes", "prefix_len", "suffix_len"),
    "jsonl": ("path",),
}


def build_workload(
    kind: str,
    *,
    num_requests: int,
    max_new_tokens: int,
    sampling: SamplingParams,
    tokenizer: tiktoken.Encoding,
    seed: int,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    **kind_options: Any,
) -> list[Request]:
    """Build ``num_requests`` requests (ids 0..N-1) of the given kind, with arrival times and sampling.

    Each request's ``max_new_tokens`` is its prompt's own (random ``output_len``, jsonl lines) or else
    ``max_new_tokens``. Sampling seeds are ``sampling.seed + request_id``; when ``sampling.seed`` is None
    and sampling is random, ``seed + request_id``, so that a run is reproducible from its seed.
    """
    if kind not in KIND_OPTIONS:
        raise WorkloadError(f"unknown workload kind {kind!r}; allowed kinds: {', '.join(KIND_OPTIONS)}")
    if unknown := sorted(set(kind_options) - set(KIND_OPTIONS[kind])):
        allowed = ", ".join(KIND_OPTIONS[kind])
        raise WorkloadError(f"{kind} workload: unknown option(s) {unknown}; allowed: {allowed}")
    if num_requests < 1:
        raise WorkloadError(f"num_requests={num_requests}: must be >= 1")
    # Separate streams for prompt ids and arrival gaps, so that changing the rate leaves the prompts alone.
    rng = random.Random(seed)
    prompt_seed, arrival_seed = rng.getrandbits(64), rng.getrandbits(64)
    prompts = _prompts(kind, kind_options, num_requests, max_new_tokens, tokenizer, prompt_seed)
    arrivals = arrival_times(num_requests, request_rate, burstiness, seed=arrival_seed)
    return [
        Request(
            request_id=i,
            prompt_token_ids=prompt.token_ids,
            params=dataclasses.replace(
                sampling,
                max_new_tokens=max_new_tokens if prompt.max_new_tokens is None else prompt.max_new_tokens,
                seed=_request_seed(sampling, seed, i),
            ),
            arrival_s=arrival,
            prompt_text=prompt.text,
        )
        for i, (prompt, arrival) in enumerate(zip(prompts, arrivals, strict=True))
    ]


def _prompts(
    kind: str,
    options: dict[str, Any],
    num_requests: int,
    max_new_tokens: int,
    tokenizer: tiktoken.Encoding,
    seed: int,
) -> list[Prompt]:
    if kind == "fixed":
        return fixed_prompts(num_requests, tokenizer, **options)
    if kind == "random":
        return random_prompts(num_requests, seed=seed, default_output_len=max_new_tokens, **options)
    if kind == "shared_prefix":
        return shared_prefix_prompts(num_requests, seed=seed, **options)
    return jsonl_prompts(num_requests, tokenizer, **options)


def _request_seed(sampling: SamplingParams, run_seed: int, request_id: int) -> int | None:
    if sampling.seed is not None:
        return sampling.seed + request_id
    if sampling.greedy:
        return None  # greedy decoding draws no random numbers
    return run_seed + request_id
