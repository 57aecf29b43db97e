"""Schedulers drive the engine through its API only: offline (all requests up front) and online
(continuous batching with arrivals, admission limits and preemption).

Names resolve on first use: ``SchedulerConfig`` (``rosebench.scheduler.config``) imports no torch."""

from rosebench._lazy import lazy_exports

_EXPORTS = {
    "rosebench.scheduler.base": ("BatchScheduler", "StepHook"),
    "rosebench.scheduler.config": ("SchedulerConfig",),
    "rosebench.scheduler.offline": ("OfflineScheduler",),
    "rosebench.scheduler.online": ("OnlineScheduler",),
    "rosebench.scheduler.records": ("PassResult", "PassStats", "RequestRecord"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
