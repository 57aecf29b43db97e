"""Groups of prompts that share a long prefix: the workload that exercises the prefix cache."""

from __future__ import annotations

import random
from dataclasses import dataclass

import tiktoken

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, Vocabulary, check_at_least_one, check_kind
from rosebench.workload.random_tokens import draw_limit, random_token_ids


@dataclass
class SharedPrefixWorkload:
    """``num_prefixes`` random prefixes of ``prefix_len`` ids, each followed by ``suffix_len`` random ids.

    Requests take prefixes round-robin (request i uses prefix i % num_prefixes), so consecutive requests
    differ and a cache must keep several prefixes alive to hit. Suffixes under one prefix are distinct.
    Ids are drawn from ``draw_limit``'s range: within the model's vocabulary and the tokenizer's.
    """

    kind: str = "shared_prefix"
    num_prefixes: int = 4
    prefix_len: int = 256
    suffix_len: int = 32

    def __post_init__(self) -> None:
        check_kind(self.kind, "shared_prefix")
        check_at_least_one(
            num_prefixes=self.num_prefixes, prefix_len=self.prefix_len, suffix_len=self.suffix_len
        )

    def prompts(
        self,
        num_requests: int,
        tokenizer: tiktoken.Encoding,
        seed: int,
        max_new_tokens: int,
        vocab: Vocabulary | None = None,
    ) -> list[Prompt]:
        limit, per_prefix = draw_limit(vocab), -(-num_requests // self.num_prefixes)
        if per_prefix > 1 and (limit == 1 or (self.suffix_len < 64 and limit**self.suffix_len < per_prefix)):
            raise WorkloadError(  # else the redraw loop below could never find a new suffix
                f"workload.suffix_len={self.suffix_len}: {per_prefix} distinct suffixes per prefix are "
                f"needed, and the model's {limit} drawable ids make only {limit**self.suffix_len}; "
                "allowed: a longer suffix_len, more num_prefixes or fewer num_requests"
            )
        rng = random.Random(seed)
        prefixes = [random_token_ids(rng, self.prefix_len, vocab) for _ in range(self.num_prefixes)]
        seen: set[tuple[int, ...]] = set()
        prompts = []
        for i in range(num_requests):
            p = i % self.num_prefixes
            suffix = random_token_ids(rng, self.suffix_len, vocab)
            while (p, *suffix) in seen:  # a repeated prompt would be a full-prompt cache hit; redraw (rare)
                suffix = random_token_ids(rng, self.suffix_len, vocab)
            seen.add((p, *suffix))
            prompts.append(Prompt(token_ids=prefixes[p] + suffix))
        return prompts
