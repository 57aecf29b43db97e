"""Optional torch.profiler pass: scheduled session, per-cycle trace export, trace summary.

Names resolve on first use: the settings and the trace summary import no torch."""

from rosebench._lazy import lazy_exports

_EXPORTS = {
    "rosebench.profiling.session": (
        "NullProfileSession",
        "ProfileResult",
        "ProfileScheduleWarning",
        "ProfileSession",
        "profile_session",
    ),
    "rosebench.profiling.settings": ("ProfileSettings",),
    "rosebench.profiling.summary": ("TraceSummary", "summarize_trace", "summarize_traces"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
