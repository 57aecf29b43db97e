"""The server's configuration: the runner's ``engine``, ``scheduler``, ``sampling`` and ``profile`` nodes
plus ``serve``. No torch and no FastAPI here: a config error is told before either is imported."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rosebench.config import SEED_LIMIT, ConfigError, unknown_keys
from rosebench.engine.config import EngineConfig
from rosebench.engine.sequence import SamplingParams
from rosebench.profiling.settings import ProfileSettings
from rosebench.scheduler.config import SchedulerConfig

API_KEY_ENV = "ROSEBENCH_API_KEY"


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # loopback unless asked: an engine with no key must not face the network
    port: int = 8000  # 0 = any free port (the one taken is written to server.json)
    api_key: str | None = None  # None = $ROSEBENCH_API_KEY, or no key; requests send `Authorization: Bearer`
    max_queued: int = 256  # requests waiting for the engine beyond which the server answers 503
    grace_s: float = 10.0  # SIGINT/SIGTERM: in-flight streams get this long to finish, then end with an error
    model_name: str | None = None  # the id in /v1/models; None = engine.model, or engine.weights as given
    access_log: bool = False  # one log line per request (costs the front's time under load)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port={self.port}: must be in [0, 65535] (0 = any free port)")
        if self.max_queued < 1:
            raise ValueError(f"serve.max_queued={self.max_queued}: must be >= 1")
        if not 0 <= self.grace_s < math.inf:
            raise ValueError(f"serve.grace_s={self.grace_s}: must be finite and >= 0")
        if self.api_key == "":
            raise ValueError("serve.api_key is empty: set a key, or null for none")

    def resolved_api_key(self) -> str | None:
        return self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV) or None


@dataclass
class ServeConfig:
    seed: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # before engine: see RunConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)  # for requests that set nothing
    profile: ProfileSettings = field(default_factory=ProfileSettings)  # for POST /start_profile
    serve: ServeSettings = field(default_factory=ServeSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed={self.seed}: must be in [0, 2**32)")

    @property
    def model_name(self) -> str:
        return self.serve.model_name or self.engine.weights or self.engine.model


def register_serve_config() -> None:
    ConfigStore.instance().store(name="rosebench_serve_schema", node=ServeConfig)


def load_serve_config(cfg: DictConfig) -> ServeConfig:
    """The composed config as typed objects; any problem is a one-line ``ConfigError``."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(unknown[0])
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
