"""A request's state inside the engine: its tokens, sampling parameters and KV block table."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


def request_seed(base_seed: int, request_id: int) -> int:
    """The sampling seed of request ``request_id``, distinct per request and reproducible from ``base_seed``
    (a run's seed, or the ``sampling.seed`` a user set); the one formula the engine and workloads share."""
    return base_seed + request_id


@dataclass
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` means greedy; ``top_k == 0`` and ``top_p == 1`` mean off.

    Also the runner's ``sampling`` config node, so the messages name the config keys. Not frozen (Hydra
    overrides write into it); requests get their own copies with ``dataclasses.replace``.
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None: request_seed(engine.seed, request id) when sampling is random
    ignore_eos: bool = False
    # EOS cannot be sampled before this many tokens (vLLM's min_tokens): its logit is masked, so the text
    # never holds an <|endoftext|> that did not end it.
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise ValueError(
                f"sampling.min_tokens={self.min_tokens}: must be in [0, max_new_tokens={self.max_new_tokens}]"
            )
        if not 0 <= self.temperature < math.inf:  # rejects NaN too
            raise ValueError(f"sampling.temperature={self.temperature}: must be finite and >= 0 (0 = greedy)")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"sampling.seed={self.seed}: must be in [0, 2**32) or null")
        if not self.top_k >= 0:
            raise ValueError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def eos_allowed(self, num_output_tokens: int) -> bool:
        """Whether EOS may be sampled as output token ``num_output_tokens + 1``."""
        return num_output_tokens >= self.min_tokens


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One generation: prompt ids, the ids generated so far, and where its KV lives.

    ``num_computed_tokens`` counts the tokens whose K/V are in the cache; after a preemption it drops to
    zero and the next prefill recomputes the prompt plus everything generated so far. Its slot is the
    engine's ``SlotPlacement``'s to know.
    """

    def __init__(self, seq_id: int, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {seq_id}: empty prompt (at least one token id is needed)")
        self.seq_id = seq_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.params = params
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served by the prefix cache at the last admission

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        """The token a decode step feeds in, without building ``token_ids`` (a copy of the whole sequence)."""
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, prompt={self.num_prompt_tokens}, out={len(self.output_token_ids)}, "
            f"status={self.status.value}, blocks={len(self.block_table)})"
        )
