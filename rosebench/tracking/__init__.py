"""MLflow tracking of benchmark runs: read from a run's saved folder, never from the engine.

- ``run_folder``: reading a run folder (results.json, .hydra, tracking.json); no MLflow import.
- ``mlflow_log``: logging a folder into an MLflow run.
- ``tracked_run``: the live run around a benchmark in the runner's process.
- ``uploads``: logging folders after the fact (``rosebench.upload``).
- ``table``, ``plots``: runs side by side (``rosebench.report``, sweep parents).
- ``sweep_callback``, ``sweep_parent``: one parent run per Hydra sweep.

Names resolve on first use, so importing ``rosebench.tracking.settings`` does not import MLflow.
"""

from rosebench._lazy import lazy_exports

_EXPORTS = {
    "rosebench.tracking.tracked_run": ("TrackedRun", "TrackingWarning"),
    "rosebench.tracking.run_folder": ("TrackingRecord",),
    "rosebench.tracking.mlflow_log": ("log_run_folder",),
    "rosebench.tracking.settings": ("TrackingSettings",),
    "rosebench.tracking.store": ("resolve_tracking_uri",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
