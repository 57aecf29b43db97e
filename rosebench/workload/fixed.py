"""The same prompt text repeated: the simplest, fully deterministic workload."""

from __future__ import annotations

import tiktoken

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt


def fixed_prompts(num_requests: int, tokenizer: tiktoken.Encoding, prompt: str = "Hello") -> list[Prompt]:
    """``num_requests`` copies of ``prompt``, tokenized once (special-token text maps to its id)."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise WorkloadError(f"fixed workload: prompt {prompt!r} encodes to no tokens; give non-empty text")
    return [Prompt(token_ids=list(ids), text=prompt) for _ in range(num_requests)]
