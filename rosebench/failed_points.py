"""Sweep points refused by their config: each says so in one line, the others run, the sweep exits 1.

Hydra marks a job that raises as failed and, once the batch has run, raises that job's exception again with
a traceback. A point whose config is refused (``--multirun num_requests=0,2``) is no crash: its job prints its
one line, records it in the sweep folder and returns. In the launcher, ``FailedPointsCallback`` then ends the
sweep with exit code 1, and the MLflow sweep parent reads the same record to end FAILED.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILED_POINTS = "failed_points.txt"  # in the sweep folder: one line per refused point


def record_failed_point(sweep_dir: Path, message: str) -> None:
    """Append one refused point's message (parallel jobs append whole lines to one file)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / FAILED_POINTS).open("a") as record:
        record.write(f"{' '.join(message.split())}\n")


def failed_points(sweep_dir: Path) -> list[str]:
    path = sweep_dir / FAILED_POINTS
    return path.read_text().splitlines() if path.is_file() else []


class FailedPointsCallback(Callback):
    """Ends a sweep with refused points with exit code 1, after every point ran. Listed first among the
    callbacks: Hydra ends a sweep's callbacks in reverse order, so MLflow's parent is closed before this."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_points(Path(config.hydra.sweep.dir))
        if failed:
            points = "point was" if len(failed) == 1 else "points were"
            print(f"rosebench: {len(failed)} sweep {points} refused (above); the others ran", file=sys.stderr)
            sys.exit(1)
