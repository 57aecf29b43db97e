"""Optional torch.profiler pass: scheduled session, per-cycle trace export, trace summary."""

from rosebench.profiling.session import (
    NullProfileSession,
    ProfileResult,
    ProfileScheduleWarning,
    ProfileSession,
    ProfileSettings,
    profile_session,
)
from rosebench.profiling.summary import format_summary, summarize_trace, summarize_traces, summary_metrics

__all__ = [
    "NullProfileSession",
    "ProfileResult",
    "ProfileScheduleWarning",
    "ProfileSession",
    "ProfileSettings",
    "format_summary",
    "profile_session",
    "summarize_trace",
    "summarize_traces",
    "summary_metrics",
]
