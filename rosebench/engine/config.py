"""Model shapes (with presets) and the engine's settings: plain dataclasses, no torch and no Hydra.

``EngineConfig`` is also the runner's ``engine`` config node (Hydra builds it with ``OmegaConf.to_object``),
so its checks run in ``__post_init__`` and every message names the key as a user writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EOS_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, the last id of its vocabulary
ARCHITECTURES = ("gpt2", "llama")  # the families in rosebench/engine/models/, one file each


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency-dependent RoPE scaling (``rope_type: llama3``), the one scaling supported."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """A model's shape and the facts the engine needs of it: how many K/V heads each layer stores (the KV
    cache's shape), how many positions it takes, its vocabulary and its EOS ids. Fields a family does not
    use keep their defaults (GPT-2 has no RoPE; the Llama family no learned positions)."""

    architecture: str = "gpt2"
    vocab_size: int = EOS_TOKEN_ID + 1
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention: fewer K/V heads; None = n_head
    head_size: int | None = None  # None = n_embd // n_head (some Llama-family models set it apart)
    intermediate_size: int | None = None  # the MLP's width; None = 4 * n_embd (GPT-2's)
    layer_norm_eps: float = 1e-5  # LayerNorm's eps for GPT-2, RMSNorm's for the Llama family
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tie_word_embeddings: bool = True
    eos_token_ids: tuple[int, ...] = (EOS_TOKEN_ID,)  # generation stops at any of them; () = never

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture}: allowed values are {', '.join(ARCHITECTURES)}"
            )
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.num_kv_heads:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.num_kv_heads}")
        if self.architecture == "llama" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs)")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def num_kv_heads(self) -> int:
        """K/V heads per layer: what the KV cache stores, ``n_head / num_kv_heads`` times fewer than
        the query heads."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size or 4 * self.n_embd

    @property
    def description(self) -> str:
        """``12-layer 768-wide GPT-2`` or ``30-layer 576-wide Llama (9 query / 3 K/V heads)``."""
        if self.architecture == "gpt2":
            return f"{self.n_layer}-layer {self.n_embd}-wide GPT-2"
        heads = f"{self.n_head} query / {self.num_kv_heads} K/V heads"
        return f"{self.n_layer}-layer {self.n_embd}-wide Llama ({heads})"


# The Llama family's presets use its defaults: no biases, RMSNorm eps 1e-5 (SmolLM2's), theta 10000.
_LLAMA = {"architecture": "llama", "qkv_bias": False, "out_bias": False, "mlp_bias": False}
# SmolLM2's vocabulary and EOS (HuggingFaceTB/SmolLM2-135M config.json), which both Llama presets keep.
_SMOLLM2 = {**_LLAMA, "vocab_size": 49152, "eos_token_ids": (0,)}

MODEL_PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(),
    "gpt2-medium": ModelConfig(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": ModelConfig(n_embd=1280, n_layer=36, n_head=20),
    # Small enough for tests and smoke runs; keeps the real vocabulary so the tokenizer still applies.
    "tiny": ModelConfig(n_positions=256, n_embd=64, n_layer=2, n_head=4),
    # SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M config.json): 3 query heads share each K/V head.
    "smollm2-135m": ModelConfig(
        **_SMOLLM2,
        n_positions=8192,
        n_embd=576,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        intermediate_size=1536,
        rope_theta=100000.0,
    ),
    # SmolLM2's vocabulary and EOS with a 2-layer, 64-wide body (2 query heads per K/V head): for tests.
    "llama-tiny": ModelConfig(
        **_SMOLLM2,
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        intermediate_size=128,
    ),
}

DTYPE_NAMES = ("float32", "bfloat16", "float16")
ATTENTION_NAMES = ("slot", "naive")  # the keys of attention.ATTENTION_CLASSES
CUDA_GRAPHS_NAMES = ("auto", "true", "false")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _at_least_one(key: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{key}={value}: must be >= 1")


@dataclass
class KVCacheConfig:
    block_size: int = 16
    num_blocks: int | None = None  # accounting budget in blocks; None = every slot may grow to max_model_len
    memory_fraction: float | None = None  # size the cache to this fraction of the device's free memory

    def __post_init__(self) -> None:
        _at_least_one("engine.kv_cache.block_size", self.block_size)
        _at_least_one("engine.kv_cache.num_blocks", self.num_blocks)
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            raise ValueError(f"engine.kv_cache.memory_fraction={self.memory_fraction}: must be in (0, 1]")


@dataclass
class EngineConfig:
    model: str = "gpt2"
    weights: str | None = None  # None = seeded random init; else an HF folder or a .pt checkpoint
    dtype: str = "float32"
    device: str = "auto"  # auto = CUDA when present
    attention: str = "slot"
    max_num_seqs: int = 64  # KV slots: sequences resident at once
    max_model_len: int | None = None  # None = the model's n_positions
    prefix_cache: bool = True
    prepack: bool = True  # oneDNN-prepacked CPU linears: float32, bf16 with AMX/AVX-512 BF16 (cpu_linear.py)
    seed: int = 0  # seeds random weights and the sampling of requests that carry no seed
    num_threads: int | None = (
        None  # CPU intra-op threads (torch.set_num_threads, process-wide); None = torch's
    )
    # Decode as CUDA graph replays, one graph per padded batch and context size; auto = on for CUDA.
    cuda_graphs: str = "auto"
    compile: bool = False  # torch.compile the static-shape decode step (inductor), before timing
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)

    def __post_init__(self) -> None:
        # Hydra reads `engine.cuda_graphs=true` as a bool, which the str node stores as "True".
        self.cuda_graphs = str(self.cuda_graphs).lower()
        if self.cuda_graphs not in CUDA_GRAPHS_NAMES:
            raise ValueError(
                f"engine.cuda_graphs={self.cuda_graphs}: allowed values are {', '.join(CUDA_GRAPHS_NAMES)}"
            )
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"engine.model={self.model}: allowed values are {', '.join(MODEL_PRESETS)}")
        if self.weights is not None and not Path(self.weights).expanduser().exists():
            raise ValueError(f"engine.weights={self.weights}: no such file or folder")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"engine.dtype={self.dtype}: allowed values are {', '.join(DTYPE_NAMES)}")
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"engine.device={self.device}: allowed values are auto, cpu, cuda, cuda:N")
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(
                f"engine.attention={self.attention}: allowed values are {', '.join(ATTENTION_NAMES)}"
            )
        _at_least_one("engine.max_num_seqs", self.max_num_seqs)
        _at_least_one("engine.max_model_len", self.max_model_len)
        _at_least_one("engine.num_threads", self.num_threads)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"engine.seed={self.seed}: must be in [0, 2**32)")


def model_source(engine: EngineConfig) -> str:
    """How messages name the run's model: ``engine.model=gpt2``, or ``engine.weights=PATH`` when given."""
    return f"engine.model={engine.model}" if engine.weights is None else f"engine.weights={engine.weights}"
