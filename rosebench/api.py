"""The library API: generate token ids with the engine and the offline scheduler, no Hydra involved."""

from __future__ import annotations

from rosebench.engine import Engine, SamplingParams
from rosebench.engine.config import model_source
from rosebench.engine.tokenizer import model_tokenizer
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import Request


def generate(
    engine: Engine,
    prompts: list[list[int]] | list[str],
    params: SamplingParams | None = None,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Output token ids for each prompt: token ids, or text encoded with the engine's model's own
    tokenizer (GPT-2's, a folder's tokenizer.json); a model without one (a random-weights Llama preset)
    refuses text with a ``ValueError`` that says how to give one."""
    params = params or SamplingParams()
    if prompts and isinstance(prompts[0], str):
        weights = engine.config.weights
        tokenizer = model_tokenizer(engine.model_config, weights, model_source(engine.config))
        prompts = [tokenizer.encode(text) for text in prompts]
    requests = [Request(i, list(ids), params) for i, ids in enumerate(prompts)]
    config = SchedulerConfig(max_batch_size=max_batch_size or engine.max_num_seqs)
    result = OfflineScheduler(engine, config).run(requests)
    return [record.output_token_ids for record in result.records]
