"""MLflow tracking of benchmark runs: read from a run's saved folder, never from the engine.

The runner wraps a benchmark in `TrackedRun`; `rosebench.upload` logs folders after the fact with
`log_run_folder`; `sweep_callback.MlflowSweepCallback` gives a Hydra sweep one parent run. Exports
resolve on first use, so importing `rosebench.tracking.settings` does not import MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrackedRun": "rosebench.tracking.run_logger",
    "TrackingRecord": "rosebench.tracking.run_logger",
    "TrackingWarning": "rosebench.tracking.run_logger",
    "log_run_folder": "rosebench.tracking.run_logger",
    "TrackingSettings": "rosebench.tracking.settings",
    "resolve_tracking_uri": "rosebench.tracking.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rosebench.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
