"""Where MLflow records go: settings, tracking-URI resolution, experiments, the sweep hand-off file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from rosebench.results import HEADLINE_METRICS
from rosebench.tracking.settings import redact_uri, uri_password

# MLflow 3.17 retries a failed HTTP request 7 times with exponential backoff (minutes through a
# refused port) and waits 120 s per request. A benchmark whose store is down must give up in seconds
# and keep its results on disk, so these are the defaults here; a user's own values win.
# Its own "View run at <URI>" lines repeat the link rosebench prints, and would print a URI's password.
CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per downloaded figures table in a report
}

SWEEP_HANDOFF = "mlflow_sweep.json"
STORE_LOCK_TIMEOUT_S = 300  # a migration of a large store takes a while; a stuck holder does not hold forever
_SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`; sqlite paths made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE}{Path.cwd() / 'mlflow.db'}"
    scheme = urlparse(uri).scheme
    if scheme == "file" or (not scheme and ("/" in uri or uri.startswith("."))):
        # MLflow 3.17 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true; say what to use instead.
        raise ValueError(
            f"tracking URI {uri!r} is a file store; use sqlite:///path/mlflow.db or http://host:port"
        )
    db = sqlite_path(uri)
    # Absolute, so that the sweep's jobs and a later upload find the same database from any cwd.
    return f"{_SQLITE}{db.resolve()}" if db is not None else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for other stores."""
    return Path(unquote(uri[len(_SQLITE) :])) if uri.startswith(_SQLITE) else None


def connect(uri: str) -> MlflowClient:
    """A client for `uri` whose HTTP calls fail fast when the server is down, and that prints nothing.

    A SQLite store is created (or its schema migrated) under a file lock beside the database: separate
    processes started at once (a Slurm array, several shells) otherwise race in MLflow's schema set-up
    and all but one lose their runs (8 processes logged 1 run).
    """
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if uri_password(uri):  # never echo a password, whatever the user's own setting
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with store_lock(db):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # builds the store: tables, migrations, Default
    return client


def store_lock(db: Path) -> FileLock:
    """The lock that serializes the creation of `db` (and of experiments in it) across processes."""
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created if missing (artifacts next to a sqlite database), with the
    runs view that links open (`RUNS_VIEW`)."""
    db = sqlite_path(uri)
    with store_lock(db) if db is not None else contextlib.nullcontext():
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            # Without an explicit location, sqlite experiments put artifacts in ./mlruns of whatever cwd
            # the first process had; next to the database they stay findable.
            location = str(db.resolve().parent / "mlruns") if db is not None else None
            # Through a server (no file lock covers it) another process may have created it meanwhile.
            with contextlib.suppress(MlflowException):
                client.create_experiment(name, artifact_location=location)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise LookupError(f"MLflow experiment {name!r} could not be created")
        if experiment.lifecycle_stage == LifecycleStage.DELETED:
            raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
        if experiment.tags.get(f"{SHARED_VIEW_TAG}{RUNS_VIEW}") != runs_view_state():
            with contextlib.suppress(MlflowException):  # a concurrent writer saved the same view
                save_runs_view(client, experiment.experiment_id, RUNS_VIEW)
    return experiment.experiment_id


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether `run_id` is a live (not deleted) run in the client's store; store errors propagate."""
    try:
        return client.get_run(run_id).info.lifecycle_stage != LifecycleStage.DELETED
    except MlflowException as error:
        # Only "no such run": an unreachable store must not read as "not logged yet" (-> duplicates).
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise


# The 3.17 UI opens an experiment on its GenAI overview; this opens the runs table.
RUNS_TABLE_QUERY = "?workflowType=machine_learning"
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise
# A saved view of the runs table (which columns show) is an experiment tag, as the UI's "Share" button
# writes it; a link names it with `viewStateShareKey`. Without one the table shows no param or metric.
# Besides the columns, MLflow 3.17 restores from it their order and widths (`columnOrder`, `columnWidths`:
# without an order it lays out metrics alphabetically, then params) and the search (`searchFilter`,
# `orderByKey`), but not which parent runs are expanded.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUNS_VIEW = "rosebench"  # single runs' view: the headline metrics
# What a performance engineer reads first, left to right after the swept params; the other headline
# metrics follow, scrolled to.
FIRST_METRICS = ("throughput_completion_tok_s", "ttft_ms_p50", "tpot_ms_p50", "ttft_ms_p99", "tpot_ms_p99")
SWEEP_ORDER_TAG = "hydra_job_num"  # zero-padded, so that sorting it as text keeps the launch order


def runs_view_state(
    params: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    children_of: str | None = None,
    tags: Mapping[str, int] | None = None,
) -> str:
    """The view's state: columns for `tags` (each as wide as its longest value, in characters: a
    comparison's verdict), `params` (a sweep's swept keys), then `metrics` (the headline ones unless given),
    each at least as wide as its name. `children_of`: show only that parent's runs, in launch order, flat
    (MLflow nests children under a collapsed parent only when sorted by start time)."""
    if metrics is None:
        metrics = [*FIRST_METRICS, *(m for m in HEADLINE_METRICS if m not in FIRST_METRICS)]
    tags = tags or {}
    chars = {
        **{f"tags.`{t}`": max(len(t), longest) for t, longest in tags.items()},
        **{f"params.`{p}`": len(p) for p in params},
        **{f"metrics.`{m}`": len(m) for m in metrics},
    }
    columns = list(chars)
    state: dict[str, object] = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {c: max(80, 7 * n + 20) for c, n in chars.items()},
    }
    if children_of is not None:
        state |= {
            "searchFilter": f"tags.`mlflow.parentRunId` = '{children_of}'",
            "orderByKey": f"tags.`{SWEEP_ORDER_TAG}`",
            "orderByAsc": True,
        }
    return json.dumps(state)


def save_runs_view(
    client: MlflowClient,
    experiment_id: str,
    key: str,
    params: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    children_of: str | None = None,
    tags: Mapping[str, int] | None = None,
) -> None:
    state = runs_view_state(params, metrics, children_of, tags)
    client.set_experiment_tag(experiment_id, f"{SHARED_VIEW_TAG}{key}", state)


def _ui_base(uri: str) -> str:
    """The UI's address: the tracking server's, or `mlflow ui`'s default. No credentials: a link never
    carries them."""
    parts = urlparse(uri)
    if parts.scheme in ("http", "https"):
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}".rstrip("/")
    return MLFLOW_UI_DEFAULT


def runs_table_url(uri: str, experiment_id: str, view: str | None = RUNS_VIEW) -> str:
    """The experiment's runs table in `view`."""
    shared = f"&viewStateShareKey={view}" if view else ""
    return f"{_ui_base(uri)}/#/experiments/{experiment_id}/runs{RUNS_TABLE_QUERY}{shared}"


def run_page_url(uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page (a sweep parent's: its plots and table), in the classic view like the table."""
    return f"{_ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}{RUNS_TABLE_QUERY}"


def ui_hint(uri: str, run_id: str, url: str) -> str:
    """One line telling the user where to look at a run."""
    if urlparse(uri).scheme in ("http", "https"):
        return f"MLflow run {run_id}: {url}"
    return f"MLflow run {run_id}: run `mlflow ui --backend-store-uri {redact_uri(uri)}` and open {url}"


@dataclass
class SweepHandoff:
    """What the launcher process tells a sweep's jobs: where to log and under which parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def write(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_HANDOFF).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepHandoff | None:
        path = sweep_dir / SWEEP_HANDOFF
        return cls(**json.loads(path.read_text())) if path.is_file() else None
