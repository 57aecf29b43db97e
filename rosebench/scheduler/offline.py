"""Offline: every request is known up front and arrives at once; ``run`` drives them to completion."""

from __future__ import annotations

from rosebench.scheduler.base import BatchScheduler
from rosebench.scheduler.records import PassResult
from rosebench.workload.request import Request


class OfflineScheduler(BatchScheduler):
    def run(self, requests: list[Request]) -> PassResult:
        """Arrival times in ``requests`` are ignored: offline means every request is there at time 0."""
        self.validate(requests)
        self.start_clock()
        for request in requests:
            self.enqueue(request, arrival_s=0.0)
        while self.has_unfinished():
            self.step()
        return self.result()
