"""The `tracking` config group as a dataclass, free of MLflow imports: a run with tracking off stays light."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class TrackingSettings:
    """The `tracking` config group."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "rosebench"
    system_metrics: bool = False
    artifacts: bool = True

    @classmethod
    def of(cls, obj: Any) -> TrackingSettings:
        """Copy from anything with these attributes (a DictConfig, another dataclass)."""
        return cls(**{f.name: getattr(obj, f.name, f.default) for f in fields(cls)})
