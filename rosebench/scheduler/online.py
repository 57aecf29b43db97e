"""Online: requests join at any time (``add_request``) and the batch changes between steps.

``run`` replays a workload's arrival times against the clock, so TTFT includes queueing: it is
measured from a request's arrival, not from the moment the scheduler admitted it.
"""

from __future__ import annotations

import time

from rosebench.scheduler.base import BatchScheduler
from rosebench.scheduler.records import PassResult
from rosebench.workload.request import Request


class OnlineScheduler(BatchScheduler):
    def add_request(self, request: Request, arrival_s: float | None = None) -> None:
        """Queue ``request``; ``arrival_s`` (pass clock) defaults to now. Raises ValueError for a
        duplicate id or a request that could never complete."""
        if request.request_id in self.records:
            raise ValueError(f"request {request.request_id}: duplicate request id")
        self.validate([request])
        self.enqueue(request, self.now() if arrival_s is None else arrival_s)

    def run(self, requests: list[Request]) -> PassResult:
        self.validate(requests)
        pending = sorted(requests, key=lambda r: (r.arrival_s, r.request_id))
        limit = self.config.max_concurrency
        self.start_clock()
        next_index = 0
        while next_index < len(pending) or self.has_unfinished():
            now = self.now()
            in_flight = len(self.waiting) + len(self.running)
            while next_index < len(pending) and pending[next_index].arrival_s <= now:
                if limit is not None and in_flight >= limit:
                    break
                request = pending[next_index]
                self.enqueue(request, self._sent_at(request, next_index))
                next_index += 1
                in_flight += 1
            if self.step() is None and next_index < len(pending):
                time.sleep(max(0.0, min(pending[next_index].arrival_s - self.now(), 0.05)))
        return self.result()

    def _sent_at(self, request: Request, index: int) -> float:
        """When the request reaches the server: its arrival, or with max_concurrency (as vLLM's bench
        serve) the moment a place freed up, i.e. the finish of the request ``limit`` places earlier."""
        limit = self.config.max_concurrency
        if limit is None or index < limit:
            return request.arrival_s
        finished = sorted(r.finish_s for r in self.records.values() if r.finish_s is not None)
        return max(request.arrival_s, finished[index - limit])
