"""rosebench: benchmark, profile and track a small GPT-2 inference engine.

Library use (no Hydra)::

    from rosebench import Engine, EngineConfig, SamplingParams, generate
    engine = Engine(EngineConfig(model="gpt2", device="auto"))
    [ids] = generate(engine, ["Hello world"], SamplingParams(max_new_tokens=16))
"""

from rosebench._lazy import lazy_exports

# Resolved on first use, so that `python -m rosebench.upload` / `.report` do not pay for importing torch.
_EXPORTS = {
    "rosebench.engine.engine": ("Engine",),
    "rosebench.engine.config": ("EngineConfig", "KVCacheConfig"),
    "rosebench.engine.sequence": ("SamplingParams",),
    "rosebench.api": ("generate",),
    "rosebench.engine.tokenizer": ("load_tokenizer",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
