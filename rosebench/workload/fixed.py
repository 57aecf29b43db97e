"""The same prompt text repeated: the simplest, fully deterministic workload."""

from __future__ import annotations

from dataclasses import dataclass

import tiktoken

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, Vocabulary, check_kind


@dataclass
class FixedWorkload:
    kind: str = "fixed"
    prompt: str = "Hello"  # one prompt text, repeated num_requests times

    def __post_init__(self) -> None:
        check_kind(self.kind, "fixed")

    def prompts(
        self,
        num_requests: int,
        tokenizer: tiktoken.Encoding,
        seed: int,
        max_new_tokens: int,
        vocab: Vocabulary | None = None,
    ) -> list[Prompt]:
        """``num_requests`` copies of the prompt, tokenized once (special-token text maps to its id); each
        id must be one the model has (``vocab``; None: the tokenizer's)."""
        ids = tokenizer.encode(self.prompt, allowed_special="all")
        if not ids:
            raise WorkloadError(f"workload.prompt={self.prompt!r} encodes to no tokens; give non-empty text")
        vocab = vocab or Vocabulary(tokenizer.n_vocab)
        if (bad := vocab.first_outside(ids)) is not None:
            raise WorkloadError(
                f"workload.prompt={self.prompt!r}: encodes to token id {bad}, outside {vocab.describe()}; "
                f"allowed: text whose GPT-2 token ids are all below {vocab.size}, or a model with the "
                f"tokenizer's {tokenizer.n_vocab} ids"
            )
        return [Prompt(token_ids=list(ids), text=self.prompt) for _ in range(num_requests)]
