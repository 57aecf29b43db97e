"""One benchmark: build the engine and workload, warm up, time ``repeat`` passes, then (optionally)
one separate profiled pass whose timings are never reported as the run's throughput."""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from rosebench import metrics
from rosebench.config import ConfigError, RunConfig
from rosebench.engine.config import MODEL_PRESETS, EngineConfig, ModelConfig, model_source
from rosebench.engine.cpu_linear import bf16_matrix_units
from rosebench.engine.engine import Engine, NonFiniteLogitsError
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.tokenizer import Tokenizer, detokenize, vocabulary_note
from rosebench.engine.weights import model_and_tokenizer
from rosebench.profiling.session import ProfileResult, ProfileSession
from rosebench.runner.conditions import ConditionsProbe
from rosebench.runner.environment import environment
from rosebench.scheduler.base import BatchScheduler
from rosebench.scheduler.offline import OfflineScheduler
from rosebench.scheduler.online import OnlineScheduler
from rosebench.scheduler.records import PassResult
from rosebench.signals import Interrupted
from rosebench.workload import Request, Vocabulary, build_workload

SCHEDULERS: dict[str, type[BatchScheduler]] = {"offline": OfflineScheduler, "online": OnlineScheduler}


class RunSetup(Protocol):
    """What a run needs of its target once prepared: in-process (``Setup``) or over HTTP
    (``remote.RemoteSetup``)."""

    config: RunConfig  # resolved, as recorded in results.json
    requests: list[Request]
    detokenize: Callable[[list[int]], str | None]  # None: a model without a tokenizer

    def model(self) -> dict[str, Any]: ...
    def environment(self) -> dict[str, Any]: ...
    def where(self) -> str: ...
    def target_record(self) -> dict[str, Any] | None: ...


@dataclass
class Setup:
    config: RunConfig  # resolved: the engine's derived values filled in, as recorded in results.json
    engine: Engine
    requests: list[Request]
    detokenize: Callable[[list[int]], str | None]  # None: a model without a tokenizer

    def model(self) -> dict[str, Any]:
        """The architecture that was loaded, which is what runs: a preset's name says nothing about a
        checkpoint given in engine.weights."""
        return model_record(self.config.engine, self.engine.model_config, self.engine.num_parameters)

    def environment(self) -> dict[str, Any]:
        return environment(self.engine.device)

    def where(self) -> str:
        """What ran the requests, for the summary's title."""
        return f"{self.engine.device} ({self.config.engine.dtype})"

    def target_record(self) -> None:
        """results.json's ``target`` block: none in-process (remote.RemoteSetup fills one)."""
        return None


@dataclass
class Outcome:
    """What the passes produced. After an interrupt: the timed passes that finished, and where it stopped."""

    passes: list[PassResult] = field(default_factory=list)
    pass_metrics: list[dict[str, float]] = field(default_factory=list)
    engine_metrics: dict[str, float] = field(default_factory=dict)  # once per run: compile, graph capture
    profile: ProfileResult | None = None
    profile_error: str | None = None
    interrupted: Interrupted | None = None
    interrupted_during: str | None = None  # the pass that was cut short, e.g. "pass 2/3"

    def aggregate(self) -> tuple[dict[str, float], dict[str, float]]:
        """Mean and std over the finished timed passes (empty when none finished), the busiest pass's
        contention, and the engine's one-off figures (no std: they are measured once)."""
        if not self.pass_metrics:
            return dict(self.engine_metrics), {}
        mean, std = metrics.aggregate(self.pass_metrics)
        busiest = max(p["contention"] for p in self.pass_metrics)
        return {**mean, "contention_max": busiest, **self.engine_metrics}, std


def prepare(config: RunConfig) -> Setup:
    """Everything that can reject the run's config, before any timing starts."""
    torch.manual_seed(config.seed)
    source = model_source(config.engine)
    try:
        # The model (read without its weights) picks the tokenizer, and its vocabulary bounds the prompt
        # ids: random ones are drawn within it, given ones are checked against it, before the engine is built.
        shape, tokenizer = model_and_tokenizer(config.engine)
        requests = run_workload(config, tokenizer, model_vocabulary(shape, tokenizer, source))
        engine = Engine(sized_for_workload(config.engine, requests))  # stops at the model's own EOS ids
        SCHEDULERS[config.mode](engine, config.scheduler).validate(requests)
        if (
            config.profile.enabled
            and engine.device.type != "cuda"
            and "cuda" in config.profile.activity_names()
        ):
            raise ConfigError(
                f"profile.activities={config.profile.activities}: the engine runs on {engine.device}, which "
                "has no CUDA activity to record (allowed here: auto, cpu)"
            )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if engine.device.type == "cpu" and engine.dtype == torch.bfloat16 and not bf16_matrix_units():
        _say(
            f"engine.dtype=bfloat16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no AMX or "
            "AVX-512 BF16 units, so bf16 runs slower than float32 here"
        )
    if note := vocabulary_note(tokenizer, engine.model_config.vocab_size, source):
        _say(note)
    # Output ids the tokenizer does not know (a larger model vocabulary) become "<|unknown:ID|>".
    return Setup(replace(config, engine=engine.config), engine, requests, partial(detokenize, tokenizer))


def model_record(engine: EngineConfig, shape: ModelConfig, parameters: int) -> dict[str, Any]:
    """results.json's ``model``: the architecture that runs, named by its preset or, for given weights, by
    its shape (a preset's name says nothing about a checkpoint)."""
    weights = engine.weights
    short = engine.model if weights is None else f"{shape.n_layer}L{shape.n_embd}d"
    described = f"{shape.description}, {parameters / 1e6:.1f}M params"
    return {
        "label": short if weights is None else f"{described}, from {weights}",
        "short": short,
        "weights": weights,
        "architecture": shape.architecture,
        "n_layer": shape.n_layer,
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_kv_head": shape.num_kv_heads,
        # What one token's K and V take in the cache: K/V heads, not query heads (grouped-query attention
        # divides it by n_head / n_kv_head), at the engine's dtype.
        "kv_bytes_per_token": SlotKVCache.bytes_per_token(shape, getattr(torch, engine.dtype)),
        "n_positions": shape.n_positions,
        "vocab_size": shape.vocab_size,
        "parameters": parameters,
    }


def model_vocabulary(shape: ModelConfig, tokenizer: Tokenizer, source: str) -> Vocabulary:
    """The ids a workload may use: the model's vocabulary, random ones drawn below the tokenizer's ordinary
    tokens (GPT-2's: below <|endoftext|>), as in-process and target=serve both draw them."""
    draw_below = None if shape.architecture == "gpt2" else tokenizer.n_ordinary
    return Vocabulary(shape.vocab_size, source, draw_below)


def sized_for_workload(engine: EngineConfig, requests: list[Request]) -> EngineConfig:
    """A preset's KV slots sized for this workload's longest request rather than the model's whole context,
    unless ``engine.max_model_len`` is set; given weights keep their model's context."""
    if engine.max_model_len is not None or engine.weights is not None:
        return engine
    longest = max(len(r.prompt_token_ids) + r.params.max_new_tokens for r in requests)
    return replace(engine, max_model_len=min(longest, MODEL_PRESETS[engine.model].n_positions))


def run_workload(config: RunConfig, tokenizer: Tokenizer, vocab: Vocabulary | None) -> list[Request]:
    """The run's requests (the same for every target): ``vocab`` bounds their ids, None for a remote
    model whose vocabulary is unknown (GPT-2's is used)."""
    return build_workload(
        config.workload,
        num_requests=config.num_requests,
        sampling=config.sampling,
        tokenizer=tokenizer,
        seed=config.seed,
        request_rate=config.scheduler.request_rate,
        burstiness=config.scheduler.burstiness,
        vocab=vocab,
    )


def run_passes(setup: Setup, run_dir: Path) -> Outcome:
    """The passes of the engine in this process (``drive_passes``); NaN weights are a one-line error."""
    outcome = Outcome(engine_metrics=setup.engine.startup_metrics())
    profiled = partial(_profiled_pass, setup, run_dir / "profile") if setup.config.profile.enabled else None
    try:
        return drive_passes(setup.config, setup.requests, outcome, partial(_timed_pass, setup), profiled)
    except NonFiniteLogitsError as error:  # bad weights or dtype: an input error, told in one line
        raise ConfigError(str(error)) from None


PassRunner = Callable[[str, bool], PassResult]  # (its label, whether it is timed) -> what it recorded


def drive_passes(
    config: RunConfig,
    requests: list[Request],
    outcome: Outcome,
    run_pass: PassRunner,
    profiled_pass: Callable[[], ProfileResult | None] | None,
    engine_threads: Callable[[], int | None] = torch.get_num_threads,
) -> Outcome:
    """Warm-up, timed and profiled passes, whatever runs them (this process's engine, a server; the
    engine's intra-op threads, for the run's conditions, from ``engine_threads``). An interrupt ends them
    and is recorded in the outcome (the pass in flight is dropped); a failing profiled pass is recorded too
    and never discards the timed ones."""
    label = ""
    if config.mode == "online" and math.isfinite(config.scheduler.request_rate):
        span = max(r.arrival_s for r in requests)
        rate = config.scheduler.request_rate
        _say(f"each pass: {len(requests)} requests arriving over {span:.1f} s (request_rate={rate})")
    try:
        for index in range(config.warmup):
            label = f"warm-up {index + 1}/{config.warmup}"
            run_pass(label, False)
        for index in range(config.repeat):
            label = f"pass {index + 1}/{config.repeat}"
            with ConditionsProbe(engine_threads) as probe:
                result = run_pass(label, True)
            outcome.passes.append(result)
            outcome.pass_metrics.append(
                {**metrics.pass_metrics(result, config.slo), **probe.conditions.metrics()}
            )
            # The pass is kept: from here an interrupt falls between passes (set before the line a user,
            # or a test, may act on).
            done, label = label, "the gap between passes"
            _say(f"{done}: {outcome.pass_metrics[-1]['throughput_completion_tok_s']:.1f} tok/s")
        if profiled_pass is not None:
            label = "profiled pass"
            try:
                outcome.profile = profiled_pass()
            except Exception as error:  # the timed figures stand on their own
                outcome.profile_error = f"{type(error).__name__}: {error}"
                _say(f"profiled pass failed ({outcome.profile_error}); the timed figures are kept")
    except Interrupted as stop:
        outcome.interrupted, outcome.interrupted_during = stop, label
    except KeyboardInterrupt:
        outcome.interrupted, outcome.interrupted_during = Interrupted(signal.SIGINT), label
    return outcome


def _timed_pass(setup: Setup, label: str, timed: bool) -> PassResult:
    setup.engine.clear_cache()  # passes are independent repetitions: none reads another's prefix cache
    device = setup.engine.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scheduler = SCHEDULERS[setup.config.mode](setup.engine, setup.config.scheduler)
    with _progress(scheduler, len(setup.requests), label):
        result = scheduler.run(setup.requests)
    result.stats.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result.stats.cuda_max_allocated_mb = torch.cuda.max_memory_allocated(device) / 2**20
        result.stats.cuda_max_reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    return result


PROGRESS_EVERY_S = 10.0


@contextlib.contextmanager
def _progress(scheduler: BatchScheduler, total: int, label: str) -> Iterator[None]:
    """A progress bar on a terminal; elsewhere (a log file, Slurm) a line every PROGRESS_EVERY_S, so that a
    long pass (a slow request rate) is never silent."""

    def status() -> tuple[int, int]:
        records = list(scheduler.records.values())
        done = sum(1 for r in records if r.finish_s is not None)
        return done, sum(len(r.output_token_ids) for r in records)

    if sys.stderr.isatty():
        with tqdm(total=total, desc=label, unit="req", leave=False, file=sys.stderr) as bar:

            def on_step(kind: str) -> None:
                done, tokens = status()
                bar.update(done - bar.n)
                bar.set_postfix_str(f"{tokens / max(scheduler.now(), 1e-9):.0f} tok/s", refresh=False)

            scheduler.on_step = on_step
            yield
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            done, tokens = status()
            _say(f"{label}: {done}/{total} requests done, {tokens} tokens, {scheduler.now():.0f} s")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


def _say(line: str) -> None:
    print(f"rosebench: {line}", file=sys.stderr, flush=True)


def _profiled_pass(setup: Setup, out_dir: Path) -> ProfileResult | None:
    engine = setup.engine
    engine.clear_cache()
    session = ProfileSession(setup.config.profile, out_dir, engine.device)
    engine.layer_labels = setup.config.profile.detail == "layer"
    try:
        with session:
            scheduler = SCHEDULERS[setup.config.mode](
                engine, setup.config.scheduler, on_step=lambda kind: session.step()
            )
            scheduler.run(setup.requests)
    finally:
        engine.layer_labels = False
    return session.result
