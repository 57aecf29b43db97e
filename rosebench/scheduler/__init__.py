"""Schedulers drive the engine through its API only: offline (all requests up front) and online
(continuous batching with arrivals, admission limits and preemption)."""

from rosebench.scheduler.base import BatchScheduler, SchedulerConfig, StepHook
from rosebench.scheduler.offline import OfflineScheduler
from rosebench.scheduler.online import OnlineScheduler
from rosebench.scheduler.records import PassResult, PassStats, RequestRecord

__all__ = [
    "BatchScheduler",
    "OfflineScheduler",
    "OnlineScheduler",
    "PassResult",
    "PassStats",
    "RequestRecord",
    "SchedulerConfig",
    "StepHook",
]
