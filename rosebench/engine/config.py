"""Model shapes (with presets) and the engine's settings. Plain dataclasses: the engine knows no Hydra."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


MODEL_PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(),
    "gpt2-medium": ModelConfig(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": ModelConfig(n_embd=1280, n_layer=36, n_head=20),
    # Small enough for tests and smoke runs; keeps the real vocabulary so the tokenizer still applies.
    "tiny": ModelConfig(n_positions=256, n_embd=64, n_layer=2, n_head=4),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class KVCacheConfig:
    block_size: int = 16
    # Accounting budget in blocks; None = every slot may grow to max_model_len.
    num_blocks: int | None = None
    # When set, size the cache to this fraction of the device's free memory instead.
    memory_fraction: float | None = None


@dataclass
class EngineConfig:
    model: str = "gpt2"
    weights: str | None = None  # None = seeded random init; else an HF folder or a .pt checkpoint
    dtype: str = "float32"
    device: str = "auto"
    attention: str = "slot"
    max_num_seqs: int = 64
    max_model_len: int | None = None  # None = the model's n_positions
    prefix_cache: bool = True
    prepack: bool = True  # oneDNN-prepacked linear weights on CPU float32 (see cpu_linear.py)
    seed: int = 0
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"engine.device={name}: no CUDA device is available here (allowed: auto, cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"engine.device={name}: allowed values are auto, cpu, cuda, cuda:N")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"engine.dtype={name}: allowed values are {', '.join(DTYPES)}")
    return DTYPES[name]
