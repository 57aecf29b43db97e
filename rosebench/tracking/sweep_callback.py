"""One MLflow parent run per Hydra sweep, created in the launcher process, closed even when a job fails.

Enable in the runner's config:

    hydra:
      callbacks:
        mlflow_sweep:
          _target_: rosebench.tracking.sweep_callback.MlflowSweepCallback
          uri: ${tracking.uri}
          experiment: ${tracking.experiment}
          enabled: ${tracking.enabled}

Hydra instantiates callbacks for every run, single runs too, so this module imports MLflow only when
a sweep actually starts: a `tracking=off` run never pays for it.
"""

from __future__ import annotations

import atexit
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


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
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from rosebench import signals

        stop_mark = Path(config.hydra.sweep.dir) / signals.STOP_MARK
        signals.on_stop(lambda: stop_mark.touch() if stop_mark.parent.is_dir() else None)  # tracking or not
        if not self.enabled:
            return
        from rosebench.tracking.settings import redact_logs

        redact_logs()  # before the launcher echoes each job's overrides
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        from rosebench.tracking.settings import describe_error, redact, redact_uri
        from rosebench.tracking.store import (
            SweepHandoff,
            connect,
            get_or_create_experiment,
            resolve_tracking_uri,
        )
        from rosebench.tracking.sweep_parent import create_sweep_parent
        from rosebench.tracking.tracked_run import TrackingWarning

        try:
            self.tracking_uri = resolve_tracking_uri(self.uri)
            client = connect(self.tracking_uri)
            self.experiment_id = get_or_create_experiment(client, self.experiment, self.tracking_uri)
            shown = [redact(o) for o in overrides]
            knob = OmegaConf.select(config, "hydra.sweeper.knob")  # a capacity search's
            self.parent_run_id = create_sweep_parent(client, self.experiment_id, sweep_dir, shown, knob)
            handoff = SweepHandoff(redact_uri(self.tracking_uri), self.experiment_id, self.parent_run_id)
            handoff.write(sweep_dir)
        except Exception as error:
            warnings.warn(
                f"MLflow sweep parent run not created ({describe_error(error)}); jobs log standalone runs "
                f"if they can; upload later with: python -m rosebench.upload {sweep_dir}",
                TrackingWarning,
                stacklevel=2,
            )
            return
        atexit.register(self.close_unfinished)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self.tracking_uri is None:
            return
        from rosebench.failed_points import failed_points
        from rosebench.tracking.capacity_log import log_capacity
        from rosebench.tracking.settings import describe_error
        from rosebench.tracking.store import connect, run_page_url, runs_table_url
        from rosebench.tracking.sweep_parent import close_sweep_parent
        from rosebench.tracking.tracked_run import TrackingWarning

        sweep_dir = Path(config.hydra.sweep.dir)
        refused = failed_points(sweep_dir)  # points with no run: all children finished
        client = connect(self.tracking_uri)
        try:  # a capacity search's bracket, probes and plot
            log_capacity(client, self.parent_run_id, sweep_dir)
        except Exception as error:  # the parent is closed all the same; the report stays in the sweep folder
            warnings.warn(
                f"capacity report not logged on the sweep's parent run ({describe_error(error)})",
                TrackingWarning,
                stacklevel=2,
            )
        status = close_sweep_parent(client, self.parent_run_id, "FAILED" if refused else None)
        atexit.unregister(self.close_unfinished)  # only now: if closing failed, the exit hook retries
        experiment_id = self.experiment_id or ""
        url = runs_table_url(self.tracking_uri, experiment_id, view=self.parent_run_id)
        log.info("sweep parent run %s ended %s; its points: %s", self.parent_run_id, status, url)
        page = run_page_url(self.tracking_uri, experiment_id, self.parent_run_id)
        log.info("the sweep's table and plots: %s", page)

    def close_unfinished(self) -> None:
        """Exit hook: a parent still RUNNING means a job failed or the sweep was interrupted."""
        if self.parent_run_id is None or self.tracking_uri is None:
            return
        from mlflow.entities import RunStatus

        from rosebench import signals
        from rosebench.tracking.store import connect
        from rosebench.tracking.sweep_parent import close_sweep_parent, end_running_children

        try:
            client = connect(self.tracking_uri)
            if client.get_run(self.parent_run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
                return
            # Stopped by a signal (rosebench.signals saw it), or an uncaught Ctrl-C.
            interrupted = (
                signals.stopped_by is not None or getattr(sys, "last_type", None) is KeyboardInterrupt
            )
            status = "KILLED" if interrupted else "FAILED"
            end_running_children(client, self.parent_run_id, status)  # workers stopped with the launcher
            close_sweep_parent(client, self.parent_run_id, status)
        except Exception as error:  # at exit there is no one left to raise to
            print(
                f"rosebench: could not close MLflow sweep run {self.parent_run_id}: {error}", file=sys.stderr
            )
