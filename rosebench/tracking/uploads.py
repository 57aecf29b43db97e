"""Log run folders to MLflow after the fact: one run, or a sweep (a parent run plus a child per job).

Uploading is idempotent, per store: a folder's run is found in the target store by its ``run_dir`` tag (the
folder's absolute path, set when the run starts) or by the run its tracking.json names, a sweep's parent by
its ``sweep_dir`` tag or by the run its mlflow_sweep.json names. A run found ended is skipped (``force``
logs it again as a new run); a run its killed process left RUNNING is ended with what the folder holds,
never logged twice. Those records name one store; uploading to another store leaves them as they are.
"""

from __future__ import annotations

from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import OmegaConf

from rosebench.overrides import parse_overrides, swept_keys
from rosebench.results import RESULTS_FILE
from rosebench.tracking.capacity_log import log_capacity
from rosebench.tracking.mlflow_log import RUN_DIR_TAG, log_run_folder
from rosebench.tracking.run_folder import (
    TrackingRecord,
    find_run_folders,
    is_run_folder,
    read_results,
    read_run,
)
from rosebench.tracking.settings import TrackingSettings, redact_uri
from rosebench.tracking.store import (
    SweepHandoff,
    connect,
    get_or_create_experiment,
    resolve_tracking_uri,
    run_exists,
    runs_table_url,
    ui_hint,
)
from rosebench.tracking.sweep_parent import SWEEP_DIR_TAG, close_sweep_parent, create_sweep_parent
from rosebench.tracking.table import SWEEP_PARENT_TAG, all_runs


def _read_record(run_dir: Path) -> TrackingRecord | None:
    """The folder's tracking.json; a damaged one counts as none (the run_dir tag still finds the run)."""
    try:
        return TrackingRecord.read(run_dir)
    except (OSError, ValueError, TypeError):
        return None


def _read_handoff(sweep_dir: Path) -> SweepHandoff | None:
    try:
        return SweepHandoff.read(sweep_dir)
    except (OSError, ValueError, TypeError):
        return None


def _tag_filter(tag: str, value: str) -> tuple[str, bool]:
    """A search filter for runs whose `tag` is `value`, and whether it matches more than that (then the
    caller compares): MLflow's filters have no escapes, so a value holding both quotes is searched with
    LIKE and its quotes (and backslashes, an escape in LIKE on some databases) as wildcards."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"tags.`{tag}` = {quote}{value}{quote}", False
    pattern = "".join("_" if c in "'\\\"" else c for c in value)
    return f"tags.`{tag}` LIKE '{pattern}'", True


def _search_store(client: MlflowClient, filter_string: str) -> list[Run]:
    """The runs of every (active) experiment in the client's store that match `filter_string`."""
    experiment_ids: list[str] = []
    page_token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=page_token)
        experiment_ids += [e.experiment_id for e in page]
        page_token = page.token
        if not page_token:
            break
    return all_runs(client, experiment_ids, filter_string) if experiment_ids else []


def _runs_tagged(client: MlflowClient, tags: dict[str, str]) -> list[Run]:
    """The store's runs that carry every one of `tags` with its value."""
    filters, broad = zip(*(_tag_filter(k, v) for k, v in tags.items()), strict=True)
    runs = _search_store(client, " and ".join(filters))
    if any(broad):
        runs = [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]
    return runs


def _oldest_first(runs: list[Run], named: str | None, client: MlflowClient) -> list[Run]:
    """`runs` and the run `named` (a folder's record of it), if that one is in the client's store; each once,
    in the order they started."""
    if named and named not in {r.info.run_id for r in runs} and run_exists(client, named):
        runs = [*runs, client.get_run(named)]
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def logged_runs(client: MlflowClient, run_dir: Path) -> list[Run]:
    """The runs of the client's store logged from `run_dir`, in the order they started: those tagged with
    its path (in any experiment), and the one its tracking.json names (a folder moved since)."""
    record = _read_record(run_dir)
    tagged = _runs_tagged(client, {RUN_DIR_TAG: str(run_dir.resolve())})
    return _oldest_first(tagged, record.run_id if record else None, client)


def find_logged_run(client: MlflowClient, run_dir: Path) -> Run | None:
    """The run of the client's store that `run_dir`'s content belongs to: of the runs logged from it, the
    one that started last (a folder reused by a later run, `hydra.run.dir=run` twice, holds that run's).
    An earlier one its killed process left RUNNING is ended KILLED: its content was overwritten."""
    runs = logged_runs(client, run_dir)
    for stale in runs[:-1]:
        if stale.info.status == "RUNNING":
            client.set_terminated(stale.info.run_id, "KILLED")
            print(
                f"ended run {stale.info.run_id}, left RUNNING by a killed process whose folder {run_dir} "
                "a later run reused, as KILLED"
            )
    return runs[-1] if runs else None


def find_sweep_parent(client: MlflowClient, sweep_dir: Path) -> Run | None:
    """The sweep's parent run in the client's store: the one its mlflow_sweep.json names, else the last
    started of those tagged with its path."""
    handoff = _read_handoff(sweep_dir)
    if handoff is not None and run_exists(client, handoff.parent_run_id):
        return client.get_run(handoff.parent_run_id)
    tagged = _runs_tagged(client, {SWEEP_PARENT_TAG: "yes", SWEEP_DIR_TAG: str(sweep_dir.resolve())})
    return _oldest_first(tagged, None, client)[-1] if tagged else None


def _write_record(run_dir: Path, uri: str, experiment_id: str, run_id: str) -> None:
    """Record where the folder was logged, unless its tracking.json already records another store's run:
    that one stays (the run_dir tag finds the run in this store)."""
    old = _read_record(run_dir)
    if old is not None and old.logged and old.tracking_uri != redact_uri(uri):
        return
    TrackingRecord(
        logged=True, tracking_uri=redact_uri(uri), experiment_id=experiment_id, run_id=run_id
    ).write(run_dir)


def upload_run(
    client: MlflowClient, uri: str, run_dir: Path, experiment_id: str, parent_run_id: str | None = None
) -> str:
    """Log one run folder as a new run and record it in the folder's tracking.json."""
    results, problem = read_results(run_dir)
    if problem is not None:  # what is readable still logs: the config, the artifacts, status FAILED
        print(f"rosebench.upload: warning: {problem}; logging the config and files only, as FAILED")
    run_id = log_run_folder(run_dir, TrackingSettings(uri=uri), parent_run_id, experiment_id, results=results)
    _write_record(run_dir, uri, experiment_id, run_id)
    print(f"logged {run_dir} as run {run_id}")
    return run_id


def needs_ending(run: Run, run_dir: Path, force: bool) -> str | None:
    """Why the folder's run `run` is to be logged into and ended rather than left or logged again: left
    RUNNING by its killed process (always: a second run would leave it RUNNING forever), or its live
    logging failed at the end (unless ``force``); None when it is logged."""
    if run.info.status == "RUNNING":
        return "left RUNNING by its killed process"
    record = _read_record(run_dir)
    if not force and record is not None and record.run_id == run.info.run_id and not record.logged:
        return f"left {run.info.status} when its logging failed"
    return None


def sweep_overrides(sweep_dir: Path) -> list[str]:
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return []
    task = OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task", default=[])
    return [str(o) for o in OmegaConf.to_container(task, resolve=False)]


def searched_knob(sweep_dir: Path) -> str | None:
    """The knob a capacity search moved (its sweeper's setting in multirun.yaml), None for a grid sweep."""
    multirun = sweep_dir / "multirun.yaml"
    return OmegaConf.select(OmegaConf.load(multirun), "hydra.sweeper.knob") if multirun.is_file() else None


def never_ran(sweep_dir: Path, jobs: list[Path]) -> list[str]:
    """The sweep's points (its swept ``key=value`` pairs) that have no job folder. A capacity search chose
    its points as it went: none was due in advance."""
    if searched_knob(sweep_dir) is not None:
        return []
    overrides = sweep_overrides(sweep_dir)
    swept = set(swept_keys(overrides))
    expected = [
        job for batch in BasicSweeper.split_arguments(parse_overrides(overrides), None) for job in batch
    ]
    ran = []
    for job_dir in jobs:
        path = job_dir / ".hydra" / "overrides.yaml"
        if path.is_file():
            ran.append(set(OmegaConf.to_container(OmegaConf.load(path))))
    return [
        " ".join(o for o in point if o.split("=", 1)[0].lstrip("+~") in swept)
        for point in expected
        if set(point) not in ran
    ]


def _write_handoff(sweep_dir: Path, uri: str, experiment_id: str, parent_run_id: str) -> None:
    """Name the parent in mlflow_sweep.json, unless that names another store's parent: it stays (the
    sweep_dir tag finds the parent in this store)."""
    old = _read_handoff(sweep_dir)
    if old is None or old.tracking_uri == redact_uri(uri):
        SweepHandoff(redact_uri(uri), experiment_id, parent_run_id).write(sweep_dir)


def upload_sweep(client: MlflowClient, uri: str, sweep_dir: Path, experiment: str, force: bool) -> str | None:
    """Log the sweep's job folders as children of one parent run; returns the parent's id (None: skipped).

    The parent and each child are looked for in the store first (`find_sweep_parent`, `find_logged_run`),
    so that uploading a sweep again, to this store or after another one, adds nothing: a sweep whose
    server died half-way gets its missing jobs added under the parent the others already have; a child the
    store still shows RUNNING (its process was killed) is ended with what its folder holds; a run logged
    standalone is put under the parent. Points that never ran are named.
    """
    jobs = [d for d in find_run_folders(sweep_dir) if d != sweep_dir]
    parent = None if force else find_sweep_parent(client, sweep_dir)
    found = {d: find_logged_run(client, d) for d in jobs}
    # A job folder with neither results nor a run in the store is a point a stopped sweep never started.
    started = [d for d in jobs if (d / RESULTS_FILE).is_file() or found[d] is not None]
    missing = never_ran(sweep_dir, started)
    if missing:
        print(f"never ran ({len(missing)} of {len(missing) + len(started)} points): {'; '.join(missing)}")
    ending = {d: why for d in started if found[d] is not None and (why := needs_ending(found[d], d, force))}
    new = [d for d in started if d not in ending and (found[d] is None or force)]
    # A run logged standalone (the job folder uploaded alone, or no parent could be made) joins the sweep.
    adopt = [
        d
        for d in started
        if d not in new and (run := found[d]) is not None and MLFLOW_PARENT_RUN_ID not in run.data.tags
    ]
    pending = [d for d in started if d in ending or d in new or d in adopt]
    if not pending and (parent is None or parent.info.status != "RUNNING"):
        print(f"skipped {sweep_dir}: its {len(started)} job folders are logged (use --force to log again)")
        return None
    if parent is not None:
        parent_run_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    else:
        experiment_id = get_or_create_experiment(client, experiment, uri)
        overrides, knob = sweep_overrides(sweep_dir), searched_knob(sweep_dir)
        parent_run_id = create_sweep_parent(client, experiment_id, sweep_dir, overrides, knob)
        _write_handoff(sweep_dir, uri, experiment_id, parent_run_id)
    for job_dir in pending:
        run = found[job_dir]
        if run is None or job_dir in new:
            upload_run(client, uri, job_dir, experiment_id, parent_run_id)
            continue
        if job_dir in ending:
            end_orphan(client, uri, job_dir, run.info.run_id, run.info.experiment_id, ending[job_dir])
        if job_dir in adopt:
            client.set_tag(run.info.run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)
            print(f"put {job_dir}'s run {run.info.run_id}, logged alone, under the sweep's parent run")
    current = client.get_run(parent_run_id).info.status  # a stopped sweep's parent keeps its KILLED
    status = current if current != "RUNNING" else "FAILED" if missing else None
    log_capacity(client, parent_run_id, sweep_dir)
    status = close_sweep_parent(client, parent_run_id, status)
    print(
        f"sweep parent run {parent_run_id} ended {status} ({len(pending)} of {len(started)} jobs logged now)"
    )
    print(ui_hint(uri, parent_run_id, runs_table_url(uri, experiment_id, parent_run_id)))
    return parent_run_id


def end_orphan(
    client: MlflowClient,
    uri: str,
    run_dir: Path,
    run_id: str,
    experiment_id: str,
    why: str = "left RUNNING by its killed process",
) -> None:
    """A run left RUNNING by a killed process (or whose live logging failed): log its folder into it and
    end it with the folder's status (KILLED when the folder has no finished results)."""
    results = read_run(run_dir)
    log_run_folder(run_dir, TrackingSettings(uri=uri), run_id=run_id, results=results)
    status = results.status if results.status != "FAILED" or results.metrics else "KILLED"
    client.set_terminated(run_id, status)
    _write_record(run_dir, uri, experiment_id, run_id)
    print(f"ended {run_dir}'s run {run_id}, {why}, as {status}")


def upload(
    path: Path, uri: str | None = None, experiment: str = "rosebench", force: bool = False
) -> str | None:
    """Log a run or sweep folder; returns the run (or parent run) id, None when skipped as already logged."""
    uri = resolve_tracking_uri(uri)
    client = connect(uri)
    if not is_run_folder(path):
        return upload_sweep(client, uri, path, experiment, force)
    run = find_logged_run(client, path)
    why = needs_ending(run, path, force) if run is not None else None
    if run is not None and why is not None:
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        end_orphan(client, uri, path, run_id, experiment_id, why)
    elif run is not None and not force:
        print(f"skipped {path}: already logged as run {run.info.run_id} (use --force to log again)")
        return None
    else:
        experiment_id = get_or_create_experiment(client, experiment, uri)
        run_id = upload_run(client, uri, path, experiment_id)
    print(ui_hint(uri, run_id, runs_table_url(uri, experiment_id)))
    return run_id
