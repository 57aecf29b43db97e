"""MLflow tracking of benchmark runs: read from a run's saved folder, never from the engine.

The runner wraps a benchmark in `TrackedRun`; `rosebench.upload` logs folders after the fact with
`log_run_folder`; `sweep_callback.MlflowSweepCallback` gives a Hydra sweep one parent run.
"""

from rosebench.tracking.run_logger import TrackedRun, TrackingRecord, TrackingWarning, log_run_folder
from rosebench.tracking.store import TrackingSettings, resolve_tracking_uri

__all__ = [
    "TrackedRun",
    "TrackingRecord",
    "TrackingSettings",
    "TrackingWarning",
    "log_run_folder",
    "resolve_tracking_uri",
]
