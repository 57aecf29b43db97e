"""A small GPT-2 inference engine in plain PyTorch: slot KV cache with block accounting, prefix cache,
batched sampling. Knows nothing of Hydra, MLflow or the benchmark runner.

Names resolve on first use: the config dataclasses (``rosebench.engine.config``) import no torch."""

from rosebench._lazy import lazy_exports

_EXPORTS = {
    "rosebench.engine.config": (
        "EOS_TOKEN_ID",
        "MODEL_PRESETS",
        "EngineConfig",
        "KVCacheConfig",
        "ModelConfig",
    ),
    "rosebench.engine.engine": ("Engine", "KVStats", "RequestTooLongError"),
    "rosebench.engine.block_manager": ("KVCacheFullError",),
    "rosebench.engine.sequence": ("SamplingParams", "Sequence", "SequenceStatus"),
    "rosebench.engine.weights": ("WeightsError",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
