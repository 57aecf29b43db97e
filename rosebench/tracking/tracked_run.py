"""The live MLflow run around one benchmark in the runner's process."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow

from rosebench.results import RunResults
from rosebench.tracking.mlflow_log import RUN_DIR_TAG, log_run_folder
from rosebench.tracking.run_folder import TrackingRecord, read_run
from rosebench.tracking.settings import TrackingSettings, describe_error, redact_uri
from rosebench.tracking.store import (
    RUNS_VIEW,
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    runs_table_url,
)

log = logging.getLogger(__name__)


class TrackingWarning(UserWarning):
    """Something was not logged to MLflow; the benchmark's results are still on disk."""


class TrackedRun:
    """The MLflow run around one benchmark.

    `start()` opens the run (a sweep job nests it under the parent named in the sweep's hand-off file);
    `finish()` logs the run folder, ends the run and writes `tracking.json`. As a context manager an
    exception ends the run FAILED and Ctrl-C ends it KILLED, and the exception propagates. A store that
    cannot be reached only costs a warning: the results stay in the folder for `rosebench.upload`.
    """

    def __init__(
        self, settings: TrackingSettings, run_dir: Path, run_name: str, sweep_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
        self.record = TrackingRecord()  # what tracking.json says: the URI without its password
        self._uri: str | None = None  # the URI connected to
        # Set by the runner: logged from memory, not from the folder (a full disk may have kept them out).
        self.results: RunResults | None = None
        self.texts: dict[str, str] = {}  # results.json, outputs.jsonl: file name -> content
        self.unwritten: str | None = None  # why tracking.json could not be written, if it could not

    def __enter__(self) -> TrackedRun:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def start(self) -> None:
        if not self.settings.enabled:
            return
        try:
            self._start()
        except Exception as error:
            self._warn("start", "this run will not be logged", error)

    def _start(self) -> None:
        handoff = SweepHandoff.read(self.sweep_dir) if self.sweep_dir is not None else None
        own = resolve_tracking_uri(self.settings.uri)
        # The hand-off names the sweep's store without its password: this job's own URI carries it.
        uri = own if handoff is None or redact_uri(own) == handoff.tracking_uri else handoff.tracking_uri
        self._uri = uri
        self.record.tracking_uri = redact_uri(uri)
        client = connect(uri)
        if handoff:
            experiment_id = handoff.experiment_id
        else:
            experiment_id = get_or_create_experiment(client, self.settings.experiment, uri)
        # The fluent run is needed for system metrics, whose monitor logs through the global tracking URI.
        mlflow.set_tracking_uri(uri)
        if self.settings.system_metrics:
            mlflow.set_system_metrics_sampling_interval(1)  # the 10 s default records nothing for short runs
            # Its start and stop are INFO lines on every run's console; its failures stay WARNING.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=self.run_name,
            parent_run_id=handoff.parent_run_id if handoff else None,
            log_system_metrics=self.settings.system_metrics,
            tags={RUN_DIR_TAG: str(self.run_dir.resolve())},  # a later upload finds a run killed mid-way
        )
        self.record = TrackingRecord(
            tracking_uri=redact_uri(uri),
            experiment_id=experiment_id,
            run_id=run.info.run_id,
            url=runs_table_url(uri, experiment_id, handoff.parent_run_id if handoff else RUNS_VIEW),
        )

    def finish(self, status: str | None = None) -> TrackingRecord:
        """Log the folder and end the run with `status` (default: results.json's); write tracking.json."""
        try:
            if self.record.run_id is not None:
                self._log_and_end(self.record.run_id, status)
        finally:
            try:
                if self.run_dir.is_dir():
                    self.record.write(self.run_dir)
            except OSError as error:  # never mask the benchmark's own error with ours; the caller says it
                self.unwritten = error.strerror or str(error)
        return self.record

    def _log_and_end(self, run_id: str, status: str | None) -> None:
        try:
            results = self.results or read_run(self.run_dir)
            log_run_folder(
                self.run_dir,
                replace(self.settings, uri=self._uri),
                run_id=run_id,
                results=results,
                texts=self.texts,
            )
            mlflow.end_run(status or results.status)
        except KeyboardInterrupt:
            self._end_quietly("KILLED")
            raise
        except Exception as error:
            self._end_quietly("FAILED")
            self._warn("finish", "the run is incomplete in MLflow", error)
            return
        self.record.logged = True

    def _end_quietly(self, status: str) -> None:
        try:
            mlflow.end_run(status)
        except Exception as error:  # the store is what failed; the active-run stack is popped regardless
            log.debug("could not end MLflow run: %s", error)

    def _warn(self, stage: str, consequence: str, error: Exception) -> None:
        described = describe_error(error)
        self.record.error = f"{stage}: {described}"
        warnings.warn(
            f"MLflow tracking failed at {stage} ({described}); {consequence}. Results are kept "
            f"in {self.run_dir}; log them later with: python -m rosebench.upload {self.run_dir}",
            TrackingWarning,
            stacklevel=3,
        )
