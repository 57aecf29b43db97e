"""A small GPT-2 inference engine in plain PyTorch: slot KV cache with block accounting, prefix cache,
batched sampling. Knows nothing of Hydra, MLflow or the benchmark runner."""

from rosebench.engine.block_manager import KVCacheFullError
from rosebench.engine.config import MODEL_PRESETS, EngineConfig, KVCacheConfig, ModelConfig
from rosebench.engine.engine import EOS_TOKEN_ID, Engine, KVStats, RequestTooLongError
from rosebench.engine.sequence import SamplingParams, Sequence, SequenceStatus
from rosebench.engine.weights import WeightsError

__all__ = [
    "EOS_TOKEN_ID",
    "MODEL_PRESETS",
    "Engine",
    "EngineConfig",
    "KVCacheConfig",
    "KVCacheFullError",
    "KVStats",
    "ModelConfig",
    "RequestTooLongError",
    "SamplingParams",
    "Sequence",
    "SequenceStatus",
    "WeightsError",
]
