"""The scheduling step both schedulers share: admit and prefill waiting sequences when possible,
otherwise decode the running batch, preempting (for recomputation) when the KV blocks run out."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch

from rosebench.engine.engine import Engine, NonFiniteLogitsError
from rosebench.engine.sequence import Sequence, SequenceStatus
from rosebench.scheduler.config import SchedulerConfig
from rosebench.scheduler.records import PassResult, PassStats, RequestRecord
from rosebench.workload.request import Request

StepHook = Callable[[str], None]  # called after every step with "prefill" or "decode"


class BatchScheduler:
    """Owns the waiting queue, the running batch and each request's record.

    ``fail_alone``: a prefill whose logits are not finite for some sequences ends those requests (finish
    reason ``"error"``, the message in their records' ``error``) and requeues the others, instead of
    raising: a server keeps serving. A benchmark pass leaves it off, so bad weights stop the run.
    """

    def __init__(
        self,
        engine: Engine,
        config: SchedulerConfig,
        on_step: StepHook | None = None,
        fail_alone: bool = False,
    ) -> None:
        self.engine = engine
        self.config = config
        self.max_batch_size = min(config.max_batch_size, engine.max_num_seqs)
        self.on_step = on_step
        self.fail_alone = fail_alone
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.records: dict[int, RequestRecord] = {}
        self.stats = PassStats()
        self._t0 = 0.0

    # -- lifecycle of a timed pass -------------------------------------------------------------------
    def validate(self, requests: list[Request]) -> None:
        """Reject a request that could never complete before the run starts, naming it."""
        seen: set[int] = set()
        for request in requests:
            if request.request_id in seen:
                raise ValueError(f"request {request.request_id}: duplicate request id")
            seen.add(request.request_id)
            try:
                self.engine.check_request(len(request.prompt_token_ids), request.params.max_new_tokens)
            except ValueError as err:
                raise ValueError(f"request {request.request_id}: {err}") from None

    def start_clock(self) -> None:
        self.engine.reset_stats()
        self.stats = PassStats()
        self.records = {}
        self._t0 = 0.0
        self._t0 = self.now()

    def now(self) -> float:
        """Seconds since the pass started, read after the device has finished queued work."""
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        return time.perf_counter() - self._t0

    def enqueue(self, request: Request, arrival_s: float) -> None:
        self.records[request.request_id] = RequestRecord(
            request_id=request.request_id,
            prompt_token_ids=list(request.prompt_token_ids),
            arrival_s=arrival_s,
        )
        self.waiting.append(Sequence(request.request_id, request.prompt_token_ids, request.params))

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: int) -> bool:
        """End a waiting or running request now (finish reason ``"abort"``) and free its KV blocks; False
        when it had already finished."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.seq_id == request_id:
                    queue.remove(seq)
                    self._end(seq, "abort")
                    return True
        return False

    def release(self, request_id: int) -> RequestRecord:
        """Hand over a finished request's record and forget it (a server's records must not grow)."""
        return self.records.pop(request_id)

    def take_stats(self) -> PassStats:
        """The step figures gathered since the last call, starting afresh (a server reads them each step)."""
        stats, self.stats = self.stats, PassStats()
        return stats

    def seconds_since_start(self, perf_counter_s: float) -> float:
        """A ``time.perf_counter()`` reading on this scheduler's clock."""
        return perf_counter_s - self._t0

    def result(self) -> PassResult:
        kv = self.engine.kv_stats()
        self.stats.elapsed_total_s = self.now()
        self.stats.peak_kv_blocks = kv.peak_blocks
        self.stats.kv_capacity_blocks = kv.capacity_blocks
        self.stats.prefix_cache_queries = kv.prefix_queries
        self.stats.prefix_cache_hits = kv.prefix_hits
        return PassResult(records=[self.records[i] for i in sorted(self.records)], stats=self.stats)

    # -- one step ------------------------------------------------------------------------------------
    def step(self) -> str | None:
        """Run one prefill or decode step; returns its kind, or None when there was nothing to do."""
        admitted = self._admit()
        if admitted:
            kind, seqs = "prefill", admitted
        elif self.running:
            self._make_room_for_decode()
            kind, seqs = "decode", list(self.running)
        else:
            return None
        start = self.now()
        try:
            tokens = self.engine.prefill(seqs) if kind == "prefill" else self.engine.decode(seqs)
        except NonFiniteLogitsError as error:
            if not self.fail_alone:
                raise
            self._fail_rows(seqs, error)
            return kind
        end = self.now()
        self._record(kind, seqs, tokens, start, end)
        if self.on_step is not None:
            self.on_step(kind)
        return kind

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.config.max_batched_tokens
        while self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            # The first sequence of a step is admitted whatever its length, so a long prompt cannot stall.
            if admitted and seq.num_tokens > budget:
                break
            if self._shares_uncached_prefix(seq, admitted):
                break  # next step it hits the blocks this step computes, instead of recomputing them
            if not self.engine.admit(seq):
                break
            self.waiting.popleft()
            budget -= seq.num_tokens - seq.num_computed_tokens
            self.running.append(seq)
            admitted.append(seq)
            record = self.records[seq.seq_id]
            if record.scheduled_s is None:
                record.scheduled_s = self.now()
        return admitted

    def _shares_uncached_prefix(self, seq: Sequence, admitted: list[Sequence]) -> bool:
        """Whether ``seq`` starts with the same full block as a sequence prefilled in this very step:
        that block is published to the prefix cache only once the step has computed it."""
        size = self.engine.block_size
        if not self.engine.prefix_cache or seq.num_tokens <= size:
            return False
        head = seq.token_ids[:size]
        return any(
            other.num_computed_tokens < size and other.num_tokens > size and other.token_ids[:size] == head
            for other in admitted
        )

    def _make_room_for_decode(self) -> None:
        # Recompute-preemption, newest first (as vLLM): the oldest requests keep their progress.
        while not self.engine.can_decode(self.running) and len(self.running) > 1:
            victim = self.running.pop()
            self.engine.preempt(victim)
            self.waiting.appendleft(victim)
            self.records[victim.seq_id].num_preemptions += 1
            self.stats.preemptions += 1

    def _fail_rows(self, seqs: list[Sequence], error: NonFiniteLogitsError) -> None:
        """End the sequences whose logits were not finite; the rest of the step is recomputed next step."""
        for seq in reversed(seqs):  # reversed: appendleft keeps their order at the head of the queue
            self.running.remove(seq)
            if seq.seq_id in error.seq_ids:
                self._end(seq, "error")
                self.records[seq.seq_id].error = str(error)
            else:
                self.engine.preempt(seq)
                self.waiting.appendleft(seq)

    def _end(self, seq: Sequence, reason: str) -> None:
        self.engine.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        record = self.records[seq.seq_id]
        record.finish_s, record.finish_reason = self.now(), reason

    def _record(self, kind: str, seqs: list[Sequence], tokens: list[int], start: float, end: float) -> None:
        elapsed = end - start
        if kind == "prefill":
            self.stats.elapsed_prefill_s += elapsed
            self.stats.prefill_steps += 1
        else:
            self.stats.elapsed_decode_s += elapsed
            self.stats.decode_step_s.append(elapsed)
            self.stats.decode_batch_sizes.append(len(seqs))
        for seq, token in zip(seqs, tokens):
            record = self.records[seq.seq_id]
            record.output_token_ids.append(token)
            record.token_times_s.append(end)
            if seq.num_cached_tokens and not record.num_cached_tokens:
                record.num_cached_tokens = seq.num_cached_tokens
            if seq.is_finished:
                record.finish_s, record.finish_reason = end, seq.finish_reason
        self.running = [s for s in self.running if not s.is_finished]
