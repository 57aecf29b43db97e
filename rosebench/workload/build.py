"""One entry point from a workload kind's settings to the list of requests a scheduler pass runs."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Protocol

import tiktoken

from rosebench.engine.sequence import SamplingParams, request_seed
from rosebench.workload.arrivals import arrival_times
from rosebench.workload.errors import WorkloadError
from rosebench.workload.fixed import FixedWorkload
from rosebench.workload.jsonl import JsonlWorkload
from rosebench.workload.prompt import Prompt, Vocabulary
from rosebench.workload.random_tokens import RandomWorkload
from rosebench.workload.request import Request
from rosebench.workload.shared_prefix import SharedPrefixWorkload


class Workload(Protocol):
    """A workload kind: its settings (the ``workload`` config node) and the prompts they make."""

    kind: str

    def prompts(
        self,
        num_requests: int,
        tokenizer: tiktoken.Encoding,
        seed: int,
        max_new_tokens: int,
        vocab: Vocabulary | None = None,
    ) -> list[Prompt]:
        """``num_requests`` prompts whose ids are all in ``vocab`` (None: the tokenizer's vocabulary): ids
        a kind draws are drawn within it, ids a user gives are checked against it."""
        ...


WORKLOAD_KINDS: dict[str, type[Workload]] = {
    "fixed": FixedWorkload,
    "random": RandomWorkload,
    "shared_prefix": SharedPrefixWorkload,
    "jsonl": JsonlWorkload,
}


def build_workload(
    workload: Workload,
    *,
    num_requests: int,
    sampling: SamplingParams,
    tokenizer: tiktoken.Encoding,
    seed: int,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    vocab: Vocabulary | None = None,
) -> list[Request]:
    """Build ``num_requests`` requests (ids 0..N-1) with arrival times and sampling.

    Each request's ``max_new_tokens`` is its prompt's own (random ``output_len``, jsonl lines) or else
    ``sampling.max_new_tokens``. Sampling seeds are ``request_seed(sampling.seed, id)``; when
    ``sampling.seed`` is None and sampling is random, ``request_seed(seed, id)``, so that a run is
    reproducible from its seed; greedy requests draw nothing and carry no seed.

    ``vocab`` is the model's vocabulary (None: the tokenizer's): every prompt id is one the model has, or
    this raises ``WorkloadError`` before any request is made.
    """
    # Separate streams for prompt ids and arrival gaps, so that changing the rate leaves the prompts alone.
    rng = random.Random(seed)
    prompt_seed, arrival_seed = rng.getrandbits(64), rng.getrandbits(64)
    vocab = vocab or Vocabulary(tokenizer.n_vocab)
    prompts = workload.prompts(num_requests, tokenizer, prompt_seed, sampling.max_new_tokens, vocab)
    for i, prompt in enumerate(prompts):  # each kind checks its own ids and says where; this one says which
        if (bad := vocab.first_outside(prompt.token_ids)) is not None:
            raise WorkloadError(
                f"workload={workload.kind}: request {i}'s prompt has token id {bad}, "
                f"outside {vocab.describe()}"
            )
    arrivals = arrival_times(num_requests, request_rate, burstiness, seed=arrival_seed)
    base_seed = sampling.seed if sampling.seed is not None else None if sampling.greedy else seed
    return [
        Request(
            request_id=i,
            prompt_token_ids=prompt.token_ids,
            params=dataclasses.replace(
                sampling,
                max_new_tokens=sampling.max_new_tokens
                if prompt.max_new_tokens is None
                else prompt.max_new_tokens,
                seed=None if base_seed is None else request_seed(base_seed, i),
            ),
            arrival_s=arrival,
            prompt_text=prompt.text,
        )
        for i, (prompt, arrival) in enumerate(zip(prompts, arrivals, strict=True))
    ]
