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
        """Queue ``request``; ``arrival_s`` (pass clock) defaults to now."""
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
                # Held back by max_concurrency, a request is "sent" (arrives) when a place frees up.
                self.add_request(request, arrival_s=max(request.arrival_s, 0.0) if limit is None else now)
                next_index += 1
                in_flight += 1
            if self.step() is None and next_index < len(pending):
                time.sleep(max(0.0, min(pending[next_index].arrival_s - self.now(), 0.05)))
        return self.result()
