"""From a composed Hydra config to the typed settings each layer takes, with the range checks that
types cannot express. Every failure is one line naming the key and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rosebench.engine import EngineConfig, KVCacheConfig, SamplingParams
from rosebench.engine.config import MODEL_PRESETS
from rosebench.profiling import ProfileSettings
from rosebench.scheduler import SchedulerConfig
from rosebench.tracking.settings import TrackingSettings
from rosebench.workload import KIND_OPTIONS


class ConfigError(ValueError):
    """A config value out of range: reported as one line, exit code 1."""


@dataclass
class RunSettings:
    mode: str
    num_requests: int
    max_new_tokens: int
    seed: int
    warmup: int
    repeat: int
    engine: EngineConfig
    scheduler: SchedulerConfig
    sampling: SamplingParams
    workload_kind: str
    workload_options: dict
    profile: ProfileSettings
    tracking: TrackingSettings


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def run_settings(cfg: DictConfig) -> RunSettings:
    _check(cfg.num_requests >= 1, f"num_requests={cfg.num_requests}: must be >= 1")
    _check(cfg.max_new_tokens >= 1, f"max_new_tokens={cfg.max_new_tokens}: must be >= 1")
    _check(cfg.warmup >= 0, f"warmup={cfg.warmup}: must be >= 0")
    _check(cfg.repeat >= 1, f"repeat={cfg.repeat}: must be >= 1")
    return RunSettings(
        mode=cfg.mode.value,
        num_requests=cfg.num_requests,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        warmup=cfg.warmup,
        repeat=cfg.repeat,
        engine=engine_config(cfg.engine, cfg.scheduler.max_batch_size, cfg.seed),
        scheduler=scheduler_config(cfg.scheduler),
        sampling=sampling_params(cfg.sampling, cfg.max_new_tokens),
        workload_kind=cfg.workload.kind,
        workload_options=workload_options(cfg.workload),
        profile=profile_settings(cfg.profile),
        tracking=TrackingSettings(**OmegaConf.to_container(cfg.tracking)),
    )


def engine_config(e: DictConfig, max_batch_size: int, seed: int) -> EngineConfig:
    _check(e.model in MODEL_PRESETS, f"engine.model={e.model}: allowed values are {', '.join(MODEL_PRESETS)}")
    if e.weights is not None:
        path = Path(e.weights).expanduser()
        _check(path.is_dir() or path.is_file(), f"engine.weights={e.weights}: no such file or folder")
    # Every other engine key is range-checked by the engine itself (engine.check_config) when prepare()
    # builds it, before the model is built; its ValueError becomes a ConfigError there.
    kv = e.kv_cache
    return EngineConfig(
        model=e.model,
        weights=e.weights,
        dtype=e.dtype,
        device=e.device,
        attention=e.attention,
        max_num_seqs=max_batch_size if e.max_num_seqs is None else e.max_num_seqs,
        max_model_len=e.max_model_len,
        prefix_cache=e.prefix_cache,
        prepack=e.prepack,
        seed=seed,
        kv_cache=KVCacheConfig(kv.block_size, kv.num_blocks, kv.memory_fraction),
    )


def scheduler_config(s: DictConfig) -> SchedulerConfig:
    config = SchedulerConfig(**OmegaConf.to_container(s))
    try:
        config.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return config


def sampling_params(s: DictConfig, max_new_tokens: int) -> SamplingParams:
    _check(s.temperature >= 0, f"sampling.temperature={s.temperature}: must be >= 0 (0 = greedy)")
    _check(s.top_k >= 0, f"sampling.top_k={s.top_k}: must be >= 0 (0 = off)")
    _check(0 < s.top_p <= 1, f"sampling.top_p={s.top_p}: must be in (0, 1] (1 = off)")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        seed=s.seed,
        ignore_eos=s.ignore_eos,
    )


def workload_options(w: DictConfig) -> dict:
    _check(w.kind in KIND_OPTIONS, f"workload.kind={w.kind}: allowed values are {', '.join(KIND_OPTIONS)}")
    if w.kind == "jsonl":
        _check(
            not OmegaConf.is_missing(w, "path") and w.path is not None,
            "workload.path: required with workload=jsonl (a file with one JSON request per line)",
        )
        _check(Path(w.path).expanduser().is_file(), f"workload.path={w.path}: no such file")
    if w.kind == "random":
        _check(w.input_len >= 1, f"workload.input_len={w.input_len}: must be >= 1")
        _check(0 <= w.range_ratio < 1, f"workload.range_ratio={w.range_ratio}: must be in [0, 1)")
    if w.kind == "shared_prefix":
        for key in ("num_prefixes", "prefix_len", "suffix_len"):
            _check(w[key] >= 1, f"workload.{key}={w[key]}: must be >= 1")
    return {key: w[key] for key in KIND_OPTIONS[w.kind]}


def profile_settings(p: DictConfig) -> ProfileSettings:
    try:
        return ProfileSettings(**OmegaConf.to_container(p))
    except ValueError as err:
        raise ConfigError(str(err)) from None
