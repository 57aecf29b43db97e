"""Dataclass schemas registered in Hydra's ConfigStore: every key and type of a run's config.

Hydra rejects an unknown key or a wrongly typed value with a clear message; ``validate`` adds the range
checks types cannot express.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from rosebench.profiling.session import ProfileSettings
from rosebench.tracking.settings import TrackingSettings


class Mode(enum.Enum):
    offline = "offline"
    online = "online"


@dataclass
class KVCacheSchema:
    block_size: int = 16
    num_blocks: int | None = None
    memory_fraction: float | None = None


@dataclass
class EngineSchema:
    model: str = "gpt2"
    weights: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    attention: str = "slot"
    max_num_seqs: int | None = None  # None = scheduler.max_batch_size
    max_model_len: int | None = None  # None = the longest request of the workload
    prefix_cache: bool = True
    prepack: bool = True
    kv_cache: KVCacheSchema = field(default_factory=KVCacheSchema)


@dataclass
class SchedulerSchema:
    max_batch_size: int = 16
    max_batched_tokens: int = 2048
    request_rate: float = float("inf")
    burstiness: float = 1.0
    max_concurrency: int | None = None


@dataclass
class SamplingSchema:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class WorkloadSchema:
    kind: str = "fixed"
    prompt: str = "Hello"
    input_len: int = 128
    output_len: int | None = None
    range_ratio: float = 0.0
    num_prefixes: int = 4
    prefix_len: int = 256
    suffix_len: int = 32
    path: str | None = None


@dataclass
class RosebenchConfig:
    mode: Mode = Mode.offline
    num_requests: int = 16
    max_new_tokens: int = 64
    seed: int = 0
    warmup: int = 1
    repeat: int = 3
    engine: EngineSchema = field(default_factory=EngineSchema)
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    workload: WorkloadSchema = field(default_factory=WorkloadSchema)
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)


def register_schemas() -> None:
    ConfigStore.instance().store(name="rosebench_schema", node=RosebenchConfig)
