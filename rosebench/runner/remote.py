"""One benchmark of a server over HTTP (``target=serve`` or ``target=http``): the same workload, passes,
figures and run folder as the in-process runner (benchmark.py), the requests sent by rosebench.target's
streaming client. No engine is built here: the server holds the model.

- ``target=serve``: rosebench.serve is started with the run's own engine, scheduler, sampling, profile and
  seed (``engine.max_model_len`` resolved from the workload, as in-process) and stopped with the run.
- ``target=http``: the server at ``target.url``; what the client cannot see of it (its device, its engine's
  step figures) is left out, never reported as 0.

Before timing: ``GET /v1/models`` (the model id), a 1-token request in the prompt form chosen (``auto``
tries token ids first on http and falls back to text on a 4xx), and whether the server can empty its prefix
cache between passes and has profiler endpoints. A pass where every request failed stops the run in one
line; the first ``ERRORS_KEPT`` failures are kept in ``errors.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rosebench.config import ConfigError, RunConfig
from rosebench.engine.config import MODEL_PRESETS, EngineConfig, KVCacheConfig, model_source
from rosebench.engine.engine import check_fits_context, resolve_device
from rosebench.engine.models import create_model
from rosebench.engine.tokenizer import NoTokenizer, Tokenizer, detokenize, load_tokenizer
from rosebench.engine.weights import model_and_tokenizer, model_config
from rosebench.files import write_atomic
from rosebench.profiling.session import ProfileResult
from rosebench.profiling.summary import TraceSummary
from rosebench.results import ERRORS_FILE
from rosebench.runner.benchmark import (
    Outcome,
    drive_passes,
    model_record,
    model_vocabulary,
    run_workload,
    sized_for_workload,
)
from rosebench.runner.environment import environment
from rosebench.scheduler.records import PassResult, PassStats
from rosebench.target.client import (
    Connection,
    HttpPass,
    RequestFailure,
    RequestFormat,
    TargetError,
    api_root,
    call,
    model_ids,
    probe,
    prometheus_values,
    run_pass,
)
from rosebench.target.launch import LocalServer, hydra_value, node_overrides
from rosebench.target.settings import public_url
from rosebench.workload import Request, Vocabulary

ERRORS_KEPT = 10  # failed requests written to errors.jsonl (each with its status and body)
RESET_PREFIX_CACHE = "/reset_prefix_cache"  # vLLM's (dev mode) and rosebench.serve's


@dataclass
class RemoteSetup:
    """What a remote run needs once the server is known to answer; the counterpart of benchmark.Setup."""

    config: RunConfig  # resolved: target=serve's engine.max_model_len filled in, as the server got it
    requests: list[Request]
    detokenize: Callable[[list[int]], str | None]  # None: a model without a tokenizer
    connection: Connection
    format: RequestFormat
    model_id: str  # the server's id of its model
    server: LocalServer | None = None  # target=serve: the server this run started (and stops)
    resets_prefix_cache: bool = False  # the server empties its prefix cache before each pass
    has_profiler: bool = False  # the server has /start_profile and /stop_profile
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first ERRORS_KEPT, for errors.jsonl
    completion_tokens_source: Counter[str] = field(default_factory=Counter)  # usage | tokenizer, per request
    output_token_ids_source: Counter[str] = field(default_factory=Counter)  # server | tokenizer

    @property
    def kind(self) -> str:
        return self.config.target.kind

    @property
    def url(self) -> str:
        return public_url(self.connection.url)

    def model(self) -> dict[str, Any]:
        """target=serve: the architecture the server loads, read without loading it; target=http: the
        server's model id only (its shape is not visible over HTTP)."""
        if self.server is None:
            return {"label": self.model_id, "short": self.model_id}
        engine = self.config.engine
        shape = model_config(engine.model, engine.weights)
        with torch.device("meta"):  # no memory: only the parameter count is wanted
            parameters = sum(p.numel() for p in create_model(shape).parameters())
        return model_record(engine, shape, parameters)

    def environment(self) -> dict[str, Any]:
        """target=serve: this machine, where the server runs on the engine's device; target=http: the
        client's machine, the device unknown (``remote``)."""
        if self.server is None:
            return {
                **environment(torch.device("cpu")),
                "device": "remote",
                "device_name": None,
                "target": "remote",
            }
        return {**environment(resolve_device(self.config.engine.device)), "target": "local"}

    def engine_threads(self) -> int | None:
        """The server's intra-op threads: its engine.num_threads, else torch's default on this machine (as
        this process's, which builds no engine); None for a remote server."""
        if self.server is None:
            return None
        return self.config.engine.num_threads or torch.get_num_threads()

    def where(self) -> str:
        if self.server is None:
            return f"{self.url} (remote)"
        device = resolve_device(self.config.engine.device)
        return f"{device} ({self.config.engine.dtype}) via rosebench.serve at {self.url}"

    def target_record(self) -> dict[str, Any]:
        """results.json's ``target``: what served the requests, and where the token counts came from."""
        return {
            "kind": self.kind,
            "url": self.url,
            "model": self.model_id,
            "endpoint": self.format.endpoint,
            "prompt": "token_ids" if self.format.send_token_ids else "text",
            "completion_tokens_source": dict(self.completion_tokens_source),
            "output_token_ids_source": dict(self.output_token_ids_source),
            "prefix_cache_reset_between_passes": self.resets_prefix_cache,
            # target=serve: the engine is the run's own, recorded in config.engine as in-process
        }


@contextlib.contextmanager
def remote_target(config: RunConfig, run_dir: Path) -> Iterator[RemoteSetup]:
    """Everything that can reject the run before timing (the workload, the server's answers); with
    target=serve the server is started here and stopped on every way out of the block."""
    try:
        if config.target.kind == "serve" or _names_a_model(config.engine):
            # The server's model (or, for target=http, the one engine.* names): its tokenizer and
            # vocabulary, as in-process, so that prompts, counts and outputs are in its own ids.
            shape, tokenizer = model_and_tokenizer(config.engine)
            vocab: Vocabulary | None = model_vocabulary(shape, tokenizer, model_source(config.engine))
        else:  # a remote model's vocabulary is unknown: GPT-2's ids, or their text
            tokenizer, vocab = load_tokenizer(), None
        _check_prompt_form(config, tokenizer)
        requests = run_workload(config, tokenizer, vocab)
        if config.target.kind == "serve":
            # The server gets the context the engine would have in-process (it cannot see the workload).
            engine = sized_for_workload(config.engine, requests)
            context = engine.max_model_len or shape.n_positions
            config = replace(config, engine=replace(engine, max_model_len=context))
            for r in requests:
                try:
                    check_fits_context(len(r.prompt_token_ids), r.params.max_new_tokens, context)
                except ValueError as error:
                    raise ValueError(f"request {r.request_id}: {error}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    with contextlib.ExitStack() as stack:
        try:
            setup = _connect(config, run_dir, requests, tokenizer, stack)
        except TargetError as error:
            raise ConfigError(str(error)) from None
        yield setup


def _names_a_model(engine: EngineConfig) -> bool:
    """Whether the config says which model a target=http server runs (``engine.weights``, or a preset of
    another family than GPT-2): its tokenizer is then used rather than GPT-2's."""
    return engine.weights is not None or MODEL_PRESETS[engine.model].architecture != "gpt2"


def _check_prompt_form(config: RunConfig, tokenizer: Tokenizer) -> None:
    """A model without a tokenizer takes token ids only: text prompts (the chat endpoint, target.prompt=
    text) are refused here, before the server starts, in one line."""
    target = config.target
    if isinstance(tokenizer, NoTokenizer) and (target.endpoint == "chat" or target.prompt == "text"):
        asked = "target.endpoint=chat" if target.endpoint == "chat" else "target.prompt=text"
        raise ValueError(
            f"{asked}: {tokenizer.source} has random weights and no tokenizer, so prompts go as token ids "
            "(target.endpoint=completions, target.prompt=auto or token_ids), or give engine.weights=<Hugging "
            "Face folder with tokenizer.json>"
        )


def server_overrides(config: RunConfig) -> list[str]:
    """The run's own engine, scheduler, sampling, profile and seed, as rosebench.serve's overrides."""
    return [
        f"seed={hydra_value(config.seed)}",
        *node_overrides("engine", config.engine),
        *node_overrides("scheduler", config.scheduler),
        *node_overrides("sampling", config.sampling),
        *node_overrides("profile", config.profile),
    ]


def _connect(
    config: RunConfig,
    run_dir: Path,
    requests: list[Request],
    tokenizer: Tokenizer,
    stack: contextlib.ExitStack,
) -> RemoteSetup:
    target = config.target
    server = None
    if target.kind == "serve":
        _say(f"starting rosebench.serve (log: {run_dir / 'server.log'})")
        server = stack.enter_context(LocalServer(server_overrides(config), run_dir, target.startup_timeout_s))
        connection = Connection(server.url, None, target.timeout_s)
        listed = model_ids(connection)
        model_id = server.model if server.model in listed else listed[0]
        if server.engine is not None:  # what the server built, as in-process results record the engine's own
            resolved = {**server.engine, "kv_cache": KVCacheConfig(**server.engine["kv_cache"])}
            config = replace(config, engine=EngineConfig(**resolved))
    else:
        connection = Connection(api_root(target.url), target.resolved_api_key(), target.timeout_s)
        listed = model_ids(connection)  # also: the server answers, before anything is timed
        model_id = target.model or listed[0]
    fmt, how = _request_format(config, connection, model_id, requests[0], tokenizer)
    setup = RemoteSetup(
        config=config,
        requests=requests,
        detokenize=partial(detokenize, tokenizer),
        connection=connection,
        format=fmt,
        model_id=model_id,
        server=server,
    )
    _say(f"target={target.kind} {setup.url}: model {model_id}; {how}")
    setup.resets_prefix_cache = _reset_prefix_cache(connection)
    if not setup.resets_prefix_cache:
        _say(
            f"the server has no {RESET_PREFIX_CACHE}: a pass may hit the prefix cache that earlier passes "
            "filled (in-process, every pass starts cold)"
        )
    if config.profile.enabled:
        # A GET on a POST-only endpoint: 405 when it exists, 404 when not; nothing is started.
        setup.has_profiler = call(connection, "GET", "/start_profile").status != 404
        if not setup.has_profiler:
            _say("the server has no profiler endpoints (/start_profile answers 404): no profiled pass")
    return setup


def _request_format(
    config: RunConfig, connection: Connection, model_id: str, request: Request, tokenizer: Tokenizer
) -> tuple[RequestFormat, str]:
    """How prompts are sent, checked with one 1-token request before timing; and why, in words."""
    target = config.target
    if target.endpoint == "chat" or target.prompt == "text":
        send_ids, why = False, "prompts sent as text"
    elif target.prompt == "token_ids":
        send_ids, why = True, "prompts sent as token ids (target.prompt=token_ids)"
    else:  # auto: rosebench's own server takes ids; any other is asked
        send_ids, why = True, "prompts sent as token ids"
    fmt = RequestFormat(model_id, target.endpoint, send_ids, tokenizer)
    failure = probe(connection, fmt, request)
    has_text = not isinstance(tokenizer, NoTokenizer)  # without one, ids are the only form
    if failure is not None and target.prompt == "auto" and send_ids and has_text and _client_error(failure):
        fmt = replace(fmt, send_token_ids=False)
        why = f"prompts sent as text (the server refused token ids: HTTP {failure.status})"
        failure = probe(connection, fmt, request)
    if failure is not None:
        raise TargetError(
            f"POST {public_url(connection.url)}{fmt.path}: a 1-token request before timing failed: "
            f"{failure.error}"
        )
    return fmt, why


def _client_error(failure: RequestFailure) -> bool:
    return failure.status is not None and 400 <= failure.status < 500


def _reset_prefix_cache(connection: Connection) -> bool:
    """Empty the server's prefix cache; False when it has no way to (the endpoint is missing)."""
    return call(connection, "POST", RESET_PREFIX_CACHE).ok


def run_remote_passes(setup: RemoteSetup, run_dir: Path) -> Outcome:
    """The passes over HTTP (``benchmark.drive_passes``, as in-process); the server this run started is
    stopped when they end, whichever way."""
    config = setup.config
    has_profile = config.profile.enabled and setup.has_profiler
    profiled = partial(_profiled_pass, setup, run_dir) if has_profile else None
    try:
        run_pass = partial(_counted_pass, setup, run_dir)
        return drive_passes(config, setup.requests, Outcome(), run_pass, profiled, setup.engine_threads)
    except TargetError as error:
        raise ConfigError(str(error)) from None
    finally:
        if setup.server is not None:
            setup.server.stop()


def _counted_pass(setup: RemoteSetup, run_dir: Path, label: str, timed: bool) -> PassResult:
    """One pass; a timed one's requests are counted by where their token counts came from. The server this
    run started is this process's child: ConditionsProbe counts its CPU as the run's own, so "contention"
    stays the rest of the machine's. A remote server's CPU is not seen."""
    sent = _pass(setup, label, run_dir)
    if timed:
        _count_sources(setup, sent)
    return sent.result


def _pass(setup: RemoteSetup, label: str, run_dir: Path) -> HttpPass:
    """One pass over HTTP. Its failures are kept (errors.jsonl); a pass where every request failed, or a
    server of this run's that died, is a ``TargetError``."""
    if setup.resets_prefix_cache:
        _reset_prefix_cache(setup.connection)  # passes are independent repetitions, as in-process
    online = setup.config.mode == "online"
    before = _server_counters(setup.connection) if setup.server is not None else {}
    sent = run_pass(
        setup.connection,
        setup.format,
        setup.requests,
        replay_arrivals=online,
        max_concurrency=setup.config.scheduler.max_concurrency if online else None,
        on_progress=partial(_progress, label, len(setup.requests)),
    )
    if setup.server is not None:
        sent.result.stats.peak_rss_mb = setup.server.peak_rss_mb()
        _engine_counters(sent.result.stats, before, _server_counters(setup.connection))
    if sent.failures:
        _keep_failures(setup, label, sent.failures, run_dir)
        if setup.server is not None:
            setup.server.check_alive()
        if len(sent.failures) == len(setup.requests):
            first = sent.failures[0]
            raise TargetError(
                f"every request of {label} failed ({setup.url}); the first, request {first.request_id}: "
                f"{first.error} (all kept in {run_dir / ERRORS_FILE})"
            )
        failed = f"{len(sent.failures)} of {len(setup.requests)} requests failed"
        _say(f"{label}: {failed} (see {run_dir / ERRORS_FILE})")
    return sent


# rosebench.serve's Prometheus series (vLLM's names) that tell a pass's engine figures, read before and after.
_PREEMPTIONS = "vllm:num_preemptions_total"
_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
_PREFIX_HITS = "vllm:prefix_cache_hits_total"
_KV_BLOCKS_TOTAL = "rosebench:kv_blocks_total"


def _server_counters(connection: Connection) -> dict[str, float]:
    answer = call(connection, "GET", "/metrics")
    return prometheus_values(answer.body) if answer.ok and isinstance(answer.body, str) else {}


def _engine_counters(stats: PassStats, before: dict[str, float], after: dict[str, float]) -> None:
    """The engine figures a server's counters tell over one pass (target=serve only: this run's server
    serves nobody else); each stays None when the server does not export it."""

    def delta(name: str) -> int | None:
        return round(after[name] - before[name]) if name in after and name in before else None

    stats.preemptions = delta(_PREEMPTIONS)
    stats.prefix_cache_queries, stats.prefix_cache_hits = delta(_PREFIX_QUERIES), delta(_PREFIX_HITS)
    total = after.get(_KV_BLOCKS_TOTAL)
    stats.kv_capacity_blocks = None if total is None else round(total)


def _progress(label: str, total: int, done: int, elapsed_s: float) -> None:
    _say(f"{label}: {done}/{total} requests done, {elapsed_s:.0f} s")


def _keep_failures(setup: RemoteSetup, label: str, failures: list[RequestFailure], run_dir: Path) -> None:
    room = ERRORS_KEPT - len(setup.failures)
    if room <= 0:
        return
    setup.failures += [{"pass": label, **asdict(f)} for f in failures[:room]]
    text = "".join(json.dumps(row) + "\n" for row in setup.failures)
    try:
        write_atomic(run_dir / ERRORS_FILE, text)
    except OSError as error:  # a full disk: the failures are still counted in the figures
        _say(f"could not write {run_dir / ERRORS_FILE} ({error.strerror or error})")


def _count_sources(setup: RemoteSetup, sent: HttpPass) -> None:
    """Where each successful request's counts came from; a source that served none is not listed."""
    counts = [
        (setup.completion_tokens_source, "usage", sent.counted_by_server),
        (setup.completion_tokens_source, "tokenizer", sent.counted_by_tokenizer),
        (setup.output_token_ids_source, "server", sent.ids_from_server),
        (setup.output_token_ids_source, "tokenizer", sent.ids_from_tokenizer),
    ]
    for counter, source, count in counts:
        if count:
            counter[source] += count


def _say(line: str) -> None:
    print(f"rosebench: {line}", file=sys.stderr, flush=True)


def _profiled_pass(setup: RemoteSetup, run_dir: Path) -> ProfileResult:
    """The untimed profiled pass: the server records it between POST /start_profile and /stop_profile, and
    names the files it wrote; they are copied into ``<run_dir>/profile`` and summarized as in-process."""
    start = call(setup.connection, "POST", "/start_profile")
    if not start.ok:
        raise TargetError(f"POST /start_profile answered HTTP {start.status}: {start.body}")
    try:
        _pass(setup, "profiled pass", run_dir)
    finally:
        stop = call(setup.connection, "POST", "/stop_profile")
    if not stop.ok or not isinstance(stop.body, dict):
        raise TargetError(f"POST /stop_profile answered HTTP {stop.status}: {stop.body}")
    return _copy_profile(stop.body, run_dir / "profile")


def _copy_profile(answer: dict[str, Any], out_dir: Path) -> ProfileResult:
    """The server's profile files (local paths: target=serve runs on this machine) copied into ``out_dir``."""
    if not answer.get("summary"):
        raise TargetError("POST /stop_profile: the server recorded no profile (no summary)")
    out_dir.mkdir(parents=True, exist_ok=True)

    def copied(path: str) -> Path:
        return Path(shutil.copy2(path, out_dir / Path(path).name))

    traces = [copied(p) for p in answer.get("traces", [])]
    summary_path = copied(answer["summary"])
    key_averages_path = (
        copied(answer["key_averages"]) if answer.get("key_averages") else out_dir / "key_averages.txt"
    )
    return ProfileResult(
        steps=int(answer.get("steps", 0)),
        traces=traces,
        key_averages=[],  # the server's operator tables are in key_averages.txt; none are in this process
        summary=TraceSummary.from_dict(json.loads(summary_path.read_text())),
        summary_path=summary_path,
        key_averages_path=key_averages_path,
        warnings=list(answer.get("warnings", [])),
    )
