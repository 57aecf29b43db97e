"""The engine loop: the engine and its scheduler on a thread of their own, fed by the HTTP front.

The HTTP side (an asyncio event loop) and the engine never share state: requests, aborts and profiler
commands go in through one queue, and each step's new tokens come out as one batch of events scheduled on
the event loop. A thread rather than a process: the front costs the engine little CPU and no GIL time
that matters (measured: README, "Serving"). One rule makes a thread as fast as the main thread: the engine
is built, and every torch op runs, on this thread only. An OpenMP pool started by a second thread doubles
the threads OpenMP manages, and libgomp then stops spinning between parallel regions (its throttled spin
count once threads outnumber cores): measured 0.8x the decode throughput, 15,000 futex sleeps a pass.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosebench.engine.engine import Engine
from rosebench.engine.sequence import SamplingParams
from rosebench.profiling.session import ProfileResult, ProfileSession
from rosebench.profiling.settings import ProfileSettings
from rosebench.scheduler.config import SchedulerConfig
from rosebench.scheduler.online import OnlineScheduler
from rosebench.scheduler.records import PassStats, RequestRecord
from rosebench.serve.metrics import ServerMetrics
from rosebench.workload.request import Request


@dataclass
class TokenEvent:
    """What one engine step means to one request: its new token ids, and how it ended if it did:
    ``stop`` or ``length``; ``abort`` (its client went away, or the server stops: ``error`` says so); or
    ``error`` (it failed: ``error`` says why)."""

    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class _Live:
    deliver: Callable[[TokenEvent], None]  # called on the event loop
    submitted_at: float  # time.perf_counter()
    sent: int = 0  # output tokens already delivered


class EngineLoop:
    """Runs ``scheduler.step()`` while requests are unfinished, and sleeps on its command queue otherwise.

    Invariant: every request submitted gets exactly one final event (finished, failed, aborted or ended at
    shutdown), after which the loop holds nothing of it: no record, no KV block.
    """

    def __init__(
        self, build_engine: Callable[[], Engine], scheduler_config: SchedulerConfig, metrics: ServerMetrics
    ) -> None:
        self.metrics = metrics
        self._build_engine = build_engine
        self._scheduler_config = scheduler_config
        self.engine: Engine | None = None  # built on the loop's thread by start()
        self._scheduler: OnlineScheduler | None = None
        self._built = threading.Event()
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="rosebench-engine", daemon=True)
        self._events: asyncio.AbstractEventLoop | None = None
        self._profile: ProfileSession | None = None
        self._stopping = False
        self.crashed: BaseException | None = None  # the loop's own failure: the server is unhealthy

    # -- called from the main thread and the HTTP side -----------------------------------------------
    def start(self) -> Engine:
        """Start the thread and build the engine there; returns it, or raises what building it raised."""
        self._thread.start()
        self._built.wait()
        if self.engine is None:
            raise self.crashed or RuntimeError("the engine loop ended before its engine was built")
        return self.engine

    def attach(self, events: asyncio.AbstractEventLoop) -> None:
        """The HTTP side's event loop, where each request's events are delivered."""
        self._events = events

    def submit(
        self, prompt_token_ids: list[int], params: SamplingParams, deliver: Callable[[TokenEvent], None]
    ) -> int:
        """Queue a request (already checked to fit); ``deliver`` gets its events on the event loop.
        Returns its id, for ``abort``."""
        request_id = next(self._ids)
        live = _Live(deliver, time.perf_counter())
        request = Request(request_id, prompt_token_ids, params)
        self._commands.put(lambda: self._add(live, request))
        return request_id

    def abort(self, request_id: int) -> None:
        """End a request whose client went away; its KV blocks are free before the next step."""
        self._commands.put(lambda: self._abort(request_id))

    def end_all_later(self, delay_s: float, reason: str) -> None:
        """In ``delay_s`` (the shutdown grace period), end every request still in flight with ``reason`` as
        its error. Safe from a signal handler."""
        if self._events is not None and not self._events.is_closed():
            self._events.call_soon_threadsafe(
                self._events.call_later,
                delay_s,
                lambda: self._commands.put(lambda: self._end_all(reason, "abort")),
            )

    def start_profile(self, settings: ProfileSettings, out_dir: Path) -> Future[None]:
        return self._call(lambda: self._start_profile(settings, out_dir))

    def stop_profile(self) -> Future[ProfileResult | None]:
        return self._call(self._stop_profile)

    def reset_prefix_cache(self) -> Future[None]:
        """Forget every cached block (a benchmark's passes start cold); refused while requests run."""
        return self._call(self._reset_prefix_cache)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the loop (after ``end_all``, nothing is in flight) and wait for its thread."""
        self._commands.put(self._request_stop)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def check(self, num_prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ``ValueError`` if the request could never complete (the model's context, the KV budget)."""
        self.engine.check_request(num_prompt_tokens, max_new_tokens)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.crashed is None

    # -- the loop's own thread -----------------------------------------------------------------------
    def _call(self, command: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(command())
            except Exception as error:  # told to the HTTP caller, the loop goes on
                future.set_exception(error)

        self._commands.put(run)
        return future

    def _run(self) -> None:
        try:
            self.engine = self._build_engine()
            self._scheduler = OnlineScheduler(self.engine, self._scheduler_config, fail_alone=True)
            self._scheduler.start_clock()
        except BaseException as error:  # start() raises it in the main thread: told as one line there
            self.crashed = error
            return
        finally:
            self._built.set()
        try:
            while not self._stopping:
                self._drain_commands(block=not self._scheduler.has_unfinished())
                if self._scheduler.has_unfinished():
                    self._scheduler.step()
                    if self._profile is not None:
                        self._profile.step()
                    self._deliver_step()
                self._publish_gauges()
        except BaseException as error:  # the server answers 503 from now on; each stream gets an error
            self.crashed = error
            self._end_all(f"the engine loop failed: {type(error).__name__}: {error}", "error")
            raise

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return
        while True:
            command()
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, live: _Live, request: Request) -> None:
        self._live[request.request_id] = live
        self._scheduler.add_request(request, self._scheduler.seconds_since_start(live.submitted_at))
        self.metrics.prompt_tokens.inc(len(request.prompt_token_ids))

    def _abort(self, request_id: int) -> None:
        live = self._live.pop(request_id, None)
        if live is not None:
            self._end(request_id, "abort")
            self._send([(live, TokenEvent([], "abort"))])

    def _end_all(self, reason: str, finish_reason: str) -> None:
        """End every request in flight: ``abort`` (the server stops: 503) or ``error`` (it failed: 500)."""
        events = [(live, TokenEvent([], finish_reason, reason)) for live in self._live.values()]
        for request_id in list(self._live):
            self._end(request_id, finish_reason)
        self._live.clear()
        self._send(events)

    def _end(self, request_id: int, finish_reason: str) -> None:
        self._scheduler.abort(request_id)
        self._scheduler.release(request_id)
        self.metrics.request_ended(finish_reason)

    def _request_stop(self) -> None:
        self._end_all("the server is shutting down", "abort")
        if self._profile is not None:
            self._stop_profile()
        self._stopping = True

    def _deliver_step(self) -> None:
        """Each live request's new tokens, and the end of those that finished, as one batch."""
        events = []
        generated = 0
        records = self._scheduler.records
        for request_id, live in list(self._live.items()):
            record = records[request_id]
            new = record.output_token_ids[live.sent :]
            if not new and record.finish_reason is None:
                continue
            live.sent += len(new)
            generated += len(new)
            if record.finish_reason is None:
                events.append((live, TokenEvent(new)))
                continue
            events.append((live, TokenEvent(new, record.finish_reason, record.error)))
            del self._live[request_id]
            self._observe_finished(self._scheduler.release(request_id))
        self._send(events)
        self.metrics.generation_tokens.inc(generated)
        self._observe_step(self._scheduler.take_stats())

    def _send(self, events: list[tuple[_Live, TokenEvent]]) -> None:
        if events and self._events is not None and not self._events.is_closed():
            self._events.call_soon_threadsafe(_deliver_all, events)

    def _start_profile(self, settings: ProfileSettings, out_dir: Path) -> None:
        if self._profile is not None:
            raise RuntimeError("a profile is already being recorded: POST /stop_profile first")
        session = ProfileSession(settings, out_dir, self.engine.device)
        session.__enter__()
        self._profile = session
        self.engine.layer_labels = settings.detail == "layer"

    def _stop_profile(self) -> ProfileResult | None:
        session, self._profile = self._profile, None
        if session is None:
            raise RuntimeError("no profile is being recorded: POST /start_profile first")
        self.engine.layer_labels = False
        session.__exit__(None, None, None)
        return session.result

    def _reset_prefix_cache(self) -> None:
        if self._scheduler.has_unfinished():
            raise RuntimeError(f"{len(self._live)} requests are in flight: reset the prefix cache when idle")
        self.engine.clear_cache()

    # -- Prometheus ----------------------------------------------------------------------------------
    def _observe_step(self, stats: PassStats) -> None:
        m = self.metrics
        m.preemptions.inc(stats.preemptions)
        kv = self.engine.kv_stats()
        m.prefix_cache_queries.inc(kv.prefix_queries)
        m.prefix_cache_hits.inc(kv.prefix_hits)
        self.engine.reset_stats()  # the engine counts lookups from zero again, as the scheduler's stats

    def _observe_finished(self, record: RequestRecord) -> None:
        m = self.metrics
        m.request_ended(record.finish_reason or "abort")
        times = record.token_times_s
        if not times:
            return
        m.time_to_first_token.observe(times[0] - record.arrival_s)
        for earlier, later in itertools.pairwise(times):
            m.inter_token_latency.observe(later - earlier)
        m.e2e_request_latency.observe(times[-1] - record.arrival_s)
        if record.scheduled_s is not None:
            m.request_queue_time.observe(record.scheduled_s - record.arrival_s)

    def _publish_gauges(self) -> None:
        m, kv = self.metrics, self.engine.kv_stats()
        m.num_requests_running.set(len(self._scheduler.running))
        m.num_requests_waiting.set(len(self._scheduler.waiting))
        m.kv_blocks_used.set(kv.used_blocks)
        m.kv_blocks_total.set(kv.capacity_blocks)
        m.kv_cache_usage.set(kv.used_blocks / kv.capacity_blocks if kv.capacity_blocks else 0.0)


def _deliver_all(events: list[tuple[_Live, TokenEvent]]) -> None:
    for live, event in events:
        live.deliver(event)
