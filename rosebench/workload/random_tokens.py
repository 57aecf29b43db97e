"""Random token prompts with spread-out lengths, as vLLM's random dataset."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import tiktoken

from rosebench.engine.config import EOS_TOKEN_ID
from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, Vocabulary, check_at_least_one, check_kind


def draw_limit(vocab: Vocabulary | None) -> int:
    """Random prompt ids are drawn from [0, draw_limit): the tokenizer's ordinary tokens (GPT-2's: all but
    ``<|endoftext|>``, as in real prompt text; another's: ``vocab.draw_below``) that the model has
    (``vocab``; None: all of them).

    The smaller of the two vocabularies, because an id beyond the model's has no embedding, and an id
    beyond the tokenizer's ordinary ones is never what text encodes to: ``<|endoftext|>``, or the extra
    rows of a vocabulary padded for speed (50304), which training never saw in an input."""
    if vocab is None:
        return EOS_TOKEN_ID
    return min(vocab.size, EOS_TOKEN_ID if vocab.draw_below is None else vocab.draw_below)


def random_token_ids(rng: random.Random, length: int, vocab: Vocabulary | None = None) -> list[int]:
    """``length`` ids uniform in [0, draw_limit(vocab))."""
    return rng.choices(range(draw_limit(vocab)), k=length)


def length_bounds(length: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive [floor(len * (1 - r)), ceil(len * (1 + r))], at least 1 (vLLM's rule)."""
    low = max(1, math.floor(length * (1 - range_ratio)))
    return low, math.ceil(length * (1 + range_ratio))


@dataclass
class RandomWorkload:
    """Prompts of random ids, as vLLM's random dataset; each length is uniform within ``length_bounds``
    of its target, and ``output_len`` (None: the run's ``max_new_tokens``) sets each one's output. Ids
    are drawn from ``draw_limit``'s range: within the model's vocabulary and the tokenizer's."""

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
        self,
        num_requests: int,
        tokenizer: tiktoken.Encoding,
        seed: int,
        max_new_tokens: int,
        vocab: Vocabulary | None = None,
    ) -> list[Prompt]:
        output_len = max_new_tokens if self.output_len is None else self.output_len
        rng = random.Random(seed)
        in_bounds = length_bounds(self.input_len, self.range_ratio)
        out_bounds = length_bounds(output_len, self.range_ratio)
        prompts = []
        for _ in range(num_requests):
            ids = random_token_ids(rng, rng.randint(*in_bounds), vocab)
            prompts.append(Prompt(token_ids=ids, max_new_tokens=rng.randint(*out_bounds)))
        return prompts
