"""One benchmark: build the engine and workload, warm up, time ``repeat`` passes, then (optionally)
one separate profiled pass whose timings are never reported as the run's throughput."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from rosebench import metrics
from rosebench.config import ConfigError, RunConfig
from rosebench.engine.config import MODEL_PRESETS
from rosebench.engine.engine import Engine
from rosebench.engine.tokenizer import load_tokenizer
from rosebench.profiling.session import ProfileResult, ProfileSession
from rosebench.scheduler.base import BatchScheduler
from rosebench.scheduler.offline import OfflineScheduler
from rosebench.scheduler.online import OnlineScheduler
from rosebench.scheduler.records import PassResult
from rosebench.workload import Request, build_workload

SCHEDULERS: dict[str, type[BatchScheduler]] = {"offline": OfflineScheduler, "online": OnlineScheduler}


@dataclass
class Setup:
    config: RunConfig  # resolved: the engine's derived values filled in, as recorded in results.json
    engine: Engine
    requests: list[Request]
    detokenize: Callable[[list[int]], str]


@dataclass
class Outcome:
    passes: list[PassResult]
    pass_metrics: list[dict[str, float]]
    metrics: dict[str, float]
    metrics_std: dict[str, float]
    profile: ProfileResult | None = None


def prepare(config: RunConfig) -> Setup:
    """Everything that can reject the run's config, before any timing starts."""
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer()
    try:
        requests = build_workload(
            config.workload,
            num_requests=config.num_requests,
            sampling=config.sampling,
            tokenizer=tokenizer,
            seed=config.seed,
            request_rate=config.scheduler.request_rate,
            burstiness=config.scheduler.burstiness,
        )
        engine_config = config.engine
        if engine_config.max_model_len is None and engine_config.weights is None:
            # Size the KV slots for this workload rather than the model's whole context.
            longest = max(len(r.prompt_token_ids) + r.params.max_new_tokens for r in requests)
            engine_config = replace(
                engine_config, max_model_len=min(longest, MODEL_PRESETS[engine_config.model].n_positions)
            )
        engine = Engine(engine_config, eos_token_id=tokenizer.eot_token)
        SCHEDULERS[config.mode](engine, config.scheduler).validate(requests)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Setup(replace(config, engine=engine.config), engine, requests, tokenizer.decode)


def run_passes(setup: Setup, run_dir: Path) -> Outcome:
    for index in range(setup.config.warmup):
        _timed_pass(setup, f"warm-up {index + 1}/{setup.config.warmup}")
    passes = [
        _timed_pass(setup, f"pass {index + 1}/{setup.config.repeat}") for index in range(setup.config.repeat)
    ]
    pass_metrics = [metrics.pass_metrics(p) for p in passes]
    mean, std = metrics.aggregate(pass_metrics)
    outcome = Outcome(passes, pass_metrics, mean, std)
    if setup.config.profile.enabled:
        outcome.profile = _profiled_pass(setup, run_dir / "profile")
    return outcome


def _timed_pass(setup: Setup, label: str) -> PassResult:
    device = setup.engine.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tqdm(
        total=len(setup.requests), desc=label, unit="req", disable=None, leave=False, file=sys.stderr
    ) as bar:
        scheduler = SCHEDULERS[setup.config.mode](setup.engine, setup.config.scheduler)
        scheduler.on_step = _progress_hook(scheduler, bar)
        result = scheduler.run(setup.requests)
    result.stats.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result.stats.cuda_max_allocated_mb = torch.cuda.max_memory_allocated(device) / 2**20
        result.stats.cuda_max_reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    return result


def _progress_hook(scheduler: BatchScheduler, bar: tqdm) -> Callable[[str], None]:
    def on_step(kind: str) -> None:
        done = sum(1 for r in scheduler.records.values() if r.finish_s is not None)
        tokens = sum(len(r.output_token_ids) for r in scheduler.records.values())
        bar.update(done - bar.n)
        bar.set_postfix_str(f"{tokens / max(scheduler.now(), 1e-9):.0f} tok/s", refresh=False)

    return on_step


def _profiled_pass(setup: Setup, out_dir: Path) -> ProfileResult | None:
    session = ProfileSession(setup.config.profile, out_dir, setup.engine.device)
    with session:
        scheduler = SCHEDULERS[setup.config.mode](
            setup.engine, setup.config.scheduler, on_step=lambda kind: session.step()
        )
        scheduler.run(setup.requests)
    return session.result
