"""A run's configuration: the domain dataclasses are the Hydra nodes, built by one ``OmegaConf.to_object``.

Each node checks itself in ``__post_init__`` (messages name the key as a user writes it), so a bad value
fails here, before any model is built or any timing starts. Derived defaults are interpolations in
``conf/config.yaml`` (``engine.max_num_seqs: ${scheduler.max_batch_size}``) or are resolved once by the
runner and the engine (``engine.max_model_len`` from the workload, the block budget), and results.json
records the resolved values that ran.
No torch is imported here: ``--help`` and config errors stay fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rosebench.engine.config import EngineConfig
from rosebench.engine.sequence import SamplingParams
from rosebench.overrides import override_values
from rosebench.profiling.settings import ProfileSettings
from rosebench.scheduler.config import SchedulerConfig
from rosebench.slo import SloConfig
from rosebench.target.settings import TARGET_KINDS, EngineTarget
from rosebench.tracking.settings import TrackingSettings
from rosebench.workload.build import WORKLOAD_KINDS

MODES = ("offline", "online")
SEED_LIMIT = 2**32  # seeds stay far from int64 overflow when offset by request ids
MAX_REQUESTS = 1_000_000  # a pass keeps every request's prompt and timeline in memory
# Groups whose options are one dataclass per kind, registered in code: {group: {kind: dataclass}}.
KIND_GROUPS: dict[str, dict[str, type]] = {"workload": WORKLOAD_KINDS, "target": TARGET_KINDS}


class ConfigError(ValueError):
    """A config value out of range: reported as one line, exit code 1, before any timing."""


@dataclass
class RunConfig:
    mode: str = "offline"  # offline: all requests known up front; online: continuous batching with arrivals
    num_requests: int = 16
    max_new_tokens: int = 64
    seed: int = 0
    warmup: int = 1  # untimed passes with the run's own shapes
    repeat: int = 3  # timed passes; metrics are their mean (and std)
    trial: int = 0  # a label that changes nothing: `--multirun trial=0,1,2` repeats a run (rosebench.compare)
    # Built in field order: the scheduler before the engine, so that a bad scheduler.max_batch_size is
    # reported under its own name rather than as the engine.max_num_seqs interpolated from it.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    workload: Any = MISSING  # one of WORKLOAD_KINDS, chosen with workload=KIND
    # One of TARGET_KINDS, chosen with target=KIND (conf/config.yaml picks engine). MISSING in the schema, as
    # workload, because a group option of another kind cannot merge into a node typed by a default.
    target: Any = MISSING
    slo: SloConfig = field(default_factory=SloConfig)  # latency bounds: goodput, a capacity search's target
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        check_run_keys(self)
        if self.target == MISSING:  # built in code (the library, tests): the engine in this process
            self.target = EngineTarget()


def check_run_keys(run: Any) -> None:
    """The top-level keys' ranges. ``load_config`` checks them before the nested nodes are built, so that a
    bad ``seed`` is reported as ``seed=`` rather than as the ``engine.seed`` interpolated from it."""
    if run.mode not in MODES:
        raise ValueError(f"mode={run.mode}: allowed values are {', '.join(MODES)}")
    for key in ("num_requests", "max_new_tokens", "repeat"):
        if getattr(run, key) < 1:
            raise ValueError(f"{key}={getattr(run, key)}: must be >= 1")
    for key in ("warmup", "trial"):
        if getattr(run, key) < 0:
            raise ValueError(f"{key}={getattr(run, key)}: must be >= 0")
    if not 0 <= run.seed < SEED_LIMIT:
        raise ValueError(f"seed={run.seed}: must be in [0, 2**32)")
    if run.num_requests > MAX_REQUESTS:
        raise ValueError(
            f"num_requests={run.num_requests}: must be <= {MAX_REQUESTS} (one pass holds them all)"
        )


def register_configs() -> None:
    """The schema of the primary config and one ``workload`` and ``target`` option per kind (no YAML needed
    for those)."""
    store = ConfigStore.instance()
    store.store(name="rosebench_schema", node=RunConfig)
    for group, kinds in KIND_GROUPS.items():
        for kind, node in kinds.items():
            store.store(group=group, name=kind, node=node)


def load_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunConfig:
    """The composed Hydra config as typed objects; any node's check failing is a one-line ``ConfigError``.
    ``overrides`` are the command line's (they tell a typed ``max_new_tokens`` from its default)."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(unknown[0])
    try:
        check_run_keys(cfg)
        _one_max_new_tokens(cfg, override_values(overrides))
        return OmegaConf.to_object(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def unknown_keys(node: DictConfig, path: str = "") -> list[str]:
    """A message for each key (``+key=...`` on the command line, or a typo in a YAML file) that no
    dataclass of the schema defines: Hydra's ``+`` adds keys even to a typed config; nothing reads them."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []
    fields = [f.name for f in dataclasses.fields(schema)]
    problems = []
    for key in node:
        name = f"{path}{key}"
        if key not in fields:
            problems.append(
                f"{name}: no such key in {_node_name(path, schema)} (its keys: {', '.join(fields)})"
            )
        elif isinstance(node._get_node(key), DictConfig) and not OmegaConf.is_missing(node, key):
            problems += unknown_keys(node[key], f"{name}.")
    return problems


def _node_name(path: str, schema: type) -> str:
    """How a user names the node: ``workload=fixed`` for a group option, ``engine`` or ``the config``."""
    group = path.rstrip(".")
    kind = next((k for k, node in KIND_GROUPS.get(group, {}).items() if node is schema), None)
    if kind is not None:
        return f"{group}={kind}"
    return group or "the config"


def _one_max_new_tokens(cfg: DictConfig, typed: dict[str, str]) -> None:
    """``sampling.max_new_tokens`` defaults to ``max_new_tokens``. Set on its own, it is what ran, so the
    top-level key (the param, results.json) takes its value; set to another value beside it, it is refused."""
    if OmegaConf.is_interpolation(cfg.sampling, "max_new_tokens"):
        return
    own = cfg.sampling.max_new_tokens
    if own < 1:  # checked here, as typed: SamplingParams names it as the max_new_tokens it defaults to
        raise ValueError(f"sampling.max_new_tokens={own}: must be >= 1")
    if own == cfg.max_new_tokens:
        return
    if "max_new_tokens" in typed:
        raise ValueError(
            f"max_new_tokens={cfg.max_new_tokens} and sampling.max_new_tokens={own} disagree: set one "
            "(sampling.max_new_tokens defaults to max_new_tokens)"
        )
    cfg.max_new_tokens = own
