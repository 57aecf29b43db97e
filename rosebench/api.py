"""The library API: generate token ids with the engine and the offline scheduler, no Hydra involved."""

from __future__ import annotations

from rosebench.engine import Engine, SamplingParams
from rosebench.engine.tokenizer import load_tokenizer
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import Request


def generate(
    engine: Engine,
    prompts: list[list[int]] | list[str],
    params: SamplingParams | None = None,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Output token ids for each prompt (token ids, or text encoded with the GPT-2 tokenizer)."""
    params = params or SamplingParams()
    if prompts and isinstance(prompts[0], str):
        tokenizer = load_tokenizer()
        prompts = [tokenizer.encode(text) for text in prompts]
    requests = [Request(i, list(ids), params) for i, ids in enumerate(prompts)]
    config = SchedulerConfig(max_batch_size=max_batch_size or engine.max_num_seqs)
    result = OfflineScheduler(engine, config).run(requests)
    return [record.output_token_ids for record in result.records]
