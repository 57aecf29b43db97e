"""One MLflow parent run per Hydra sweep, created in the launcher process, closed even when a job fails.

Enable in the runner's config:

    hydra:
      callbacks:
        mlflow_sweep:
          _target_: rosebench.tracking.sweep_callback.MlflowSweepCallback
          uri: ${tracking.uri}
          experiment: ${tracking.experiment}
          enabled: ${tracking.enabled}
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import tempfile
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf

from rosebench.report import SWEEP_PARENT_TAG, Table, child_runs, row_from_run
from rosebench.tracking.run_logger import TrackingWarning, describe_error
from rosebench.tracking.store import (
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    ui_hint,
)

log = logging.getLogger(__name__)

SWEEP_TABLE = "sweep_table.json"


def swept_override_keys(overrides: list[str]) -> list[str]:
    """The keys an override list sweeps (`num_requests=1,16`, `x=range(1,4)`, ...)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def create_sweep_parent(
    client: MlflowClient, experiment_id: str, sweep_dir: Path, overrides: list[str]
) -> str:
    """A RUNNING parent run for a sweep, made with the client so no fluent run leaks into in-process jobs."""
    keys = swept_override_keys(overrides)
    name = "-".join(["sweep", datetime.now().strftime("%Y%m%d-%H%M%S"), *keys])
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            SWEEP_PARENT_TAG: "yes",
            "sweep_dir": str(sweep_dir.resolve()),
            "sweep_overrides": json.dumps(overrides),
            "swept_keys": ",".join(keys),
        },
    )
    return run.info.run_id


def close_sweep_parent(client: MlflowClient, parent_run_id: str, status: str | None = None) -> str:
    """Log the children table and plots to the parent and end it; returns the status it ended with.

    Without `status`: FINISHED when there are children and all finished, else FAILED.
    """
    table = Table.of(row_from_run(run) for run in child_runs(client, parent_run_id))
    if status is None:
        done = bool(table.rows) and all(row.status == "FINISHED" for row in table.rows)
        status = "FINISHED" if done else "FAILED"
    try:
        if table.rows:
            client.log_table(parent_run_id, data=table.columns(), artifact_file=SWEEP_TABLE)
            with tempfile.TemporaryDirectory() as tmp:
                for png in table.plots(Path(tmp)):
                    client.log_artifact(parent_run_id, str(png), artifact_path="plots")
    finally:
        client.set_terminated(parent_run_id, status)
    return status


class MlflowSweepCallback(Callback):
    """Creates the sweep's database, experiment and parent run once, before any job starts.

    Jobs find the ids in `<sweep dir>/mlflow_sweep.json` (`TrackedRun` reads it). The parent is closed by
    `on_multirun_end`, or, since Hydra skips that when a job fails, by an exit hook. Only strings are kept
    on the instance: launchers (joblib, submitit) pickle callbacks into their workers.
    """

    def __init__(self, uri: str | None = None, experiment: str = "rosebench", enabled: bool = True) -> None:
        self.uri = uri
        self.experiment = experiment
        self.enabled = enabled
        self.tracking_uri: str | None = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        try:
            self.tracking_uri = resolve_tracking_uri(self.uri)
            client = connect(self.tracking_uri)
            experiment_id = get_or_create_experiment(client, self.experiment, self.tracking_uri)
            self.parent_run_id = create_sweep_parent(client, experiment_id, sweep_dir, overrides)
            SweepHandoff(self.tracking_uri, experiment_id, self.parent_run_id).write(sweep_dir)
        except Exception as error:
            warnings.warn(
                f"MLflow sweep parent run not created ({describe_error(error)}); jobs log standalone runs "
                f"if they can; upload later with: python -m rosebench.upload {sweep_dir}",
                TrackingWarning,
                stacklevel=2,
            )
            return
        atexit.register(self.close_unfinished)
        log.info("sweep parent %s", ui_hint(self.tracking_uri, experiment_id, self.parent_run_id))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.tracking_uri is None:
            return
        status = close_sweep_parent(connect(self.tracking_uri), self.parent_run_id)
        atexit.unregister(self.close_unfinished)  # only now: if closing failed, the exit hook retries
        log.info("sweep parent run %s ended %s", self.parent_run_id, status)

    def close_unfinished(self) -> None:
        """Exit hook: a parent still RUNNING means a job failed or the sweep was interrupted."""
        if self.parent_run_id is None or self.tracking_uri is None:
            return
        try:
            client = connect(self.tracking_uri)
            if client.get_run(self.parent_run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
                return
            # An uncaught Ctrl-C is the interpreter's last exception when exit hooks run.
            interrupted = getattr(sys, "last_type", None) is KeyboardInterrupt
            close_sweep_parent(client, self.parent_run_id, "KILLED" if interrupted else "FAILED")
        except Exception as error:  # at exit there is no one left to raise to
            print(
                f"rosebench: could not close MLflow sweep run {self.parent_run_id}: {error}", file=sys.stderr
            )
