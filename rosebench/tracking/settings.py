"""The `tracking` config node as a dataclass, free of MLflow imports: a run with tracking off stays light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackingSettings:
    enabled: bool = True
    uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch folder
    experiment: str = "rosebench"
    system_metrics: bool = False  # CPU/memory (and GPU via pynvml) every second
    artifacts: bool = True  # results.json, outputs.jsonl, .hydra/, profile/
