"""``python -m rosebench [overrides]``: compose the config, benchmark, write the run folder, log to MLflow."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import ValueType
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rosebench_capacity.capacity_sweeper import CapacitySweeper
from rosebench import signals
from rosebench.conf_dir import conf_dir
from rosebench.config import ConfigError, RunConfig, load_config, register_configs
from rosebench.failed_points import record_failed_point
from rosebench.files import write_atomic
from rosebench.overrides import name_part, naming_overrides, parse_overrides, swept_keys, value_part
from rosebench.results import RESULTS_FILE, ProfileRecord, RunInfo, RunResults
from rosebench.signals import STOP_MARK, stop_signals_as_interrupt
from rosebench.tracking.run_folder import TRACKING_RECORD, TrackingRecord
from rosebench.tracking.settings import REDACTED, TrackingSettings, redact, redact_logs, redact_uri

if TYPE_CHECKING:
    from rosebench.runner.benchmark import Outcome, RunSetup
    from rosebench.tracking.tracked_run import TrackedRun

log = logging.getLogger("rosebench")
register_configs()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_name(config: RunConfig, model: str, overrides: list[str], swept: list[str]) -> str:
    """A sweep point: its swept values, bare, first (``16, 4 (num_requests, max_batch_size) offline-tiny``):
    MLflow's run-name column shows about 15 characters, and the values are what tell siblings apart.
    A single run: mode and its overrides (the mode leads anyway, so ``mode=`` is not repeated)."""
    named = [o for o in naming_overrides(overrides) if o.key_or_group != "mode"]
    if swept:
        by_key = {o.key_or_group: o for o in named}
        shown = [k for k in swept if k in by_key]
        if not shown:  # a sweep over mode alone: the mode leads anyway
            return f"{config.mode}-{model}"
        values = ", ".join(value_part(by_key[k]) for k in shown)
        keys = ", ".join(k.rsplit(".", 1)[-1] for k in shown)
        return f"{values} ({keys}) {config.mode}-{model}"
    shown = [name_part(o) for o in named]
    weights = [model] if config.engine.weights else []
    return "-".join([config.mode, *shown, *weights]) if shown else f"{config.mode}-{model}"


def _swept_keys(sweep_dir: Path, sweeper: Any) -> list[str]:
    """The keys the sweep varies, in command-line order: the launcher saved its overrides in
    multirun.yaml (each job's own overrides hold single values); then the sweeper's config params, or the
    knob a capacity search moves."""
    saved = sweep_dir / "multirun.yaml"
    overrides = OmegaConf.load(saved).hydra.overrides.task if saved.is_file() else []
    searched = [sweeper.knob] if "knob" in sweeper else []
    return list(dict.fromkeys([*swept_keys(overrides), *(sweeper.get("params") or {}), *searched]))


def _run_info(config: RunConfig, model: str) -> RunInfo:
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    swept = _swept_keys(Path(hc.sweep.dir), hc.sweeper) if multirun else []
    return RunInfo(
        name=_run_name(config, model, overrides, swept),
        mode=config.mode,
        profiled=config.profile.enabled,
        overrides=overrides,
        job_name=hc.job.name,
        job_id=hc.job.get("id"),
        job_num=hc.job.get("num") if multirun else None,
        sweep_dir=str(Path(hc.sweep.dir).resolve()) if multirun else None,
        started_at=_now(),
    )


def _warn_parallel_launcher() -> None:
    launcher = HydraConfig.get().launcher
    if "joblib" in str(launcher.get("_target_", "")) and launcher.get("n_jobs", 1) != 1:
        warnings.warn(
            "parallel joblib jobs share this machine's cores (and GPU): their timings distort each other",
            stacklevel=2,
        )


def benchmark(config: RunConfig) -> dict[str, float]:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN and (Path(hc.sweep.dir) / STOP_MARK).exists():
        print("rosebench: the sweep was stopped; this point does not start", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM)
    run_dir = Path(hc.runtime.output_dir)
    redact_logs()
    _scrub_hydra_files(run_dir)
    with _prepared(config, run_dir) as (setup, run_passes):
        return _measure(config, setup, run_passes, run_dir)


@contextlib.contextmanager
def _prepared(config: RunConfig, run_dir: Path) -> Iterator[tuple[RunSetup, Callable[[Any, Path], Outcome]]]:
    """The run's setup and the function that runs its passes: the engine in this process (target=engine),
    or a server over HTTP (target=serve starts it here, and it is stopped on every way out of the block)."""
    # Imported here so that `--help` and config errors stay fast (no torch).
    if config.target.kind == "engine":
        from rosebench.runner.benchmark import prepare, run_passes

        yield prepare(config), run_passes
        return
    from rosebench.runner.remote import remote_target, run_remote_passes

    with remote_target(config, run_dir) as setup:
        yield setup, run_remote_passes


def _measure(
    config: RunConfig, setup: RunSetup, run_passes: Callable[[Any, Path], Outcome], run_dir: Path
) -> dict[str, float]:
    from rosebench import metrics
    from rosebench.results import OUTPUTS_FILE, outputs_text
    from rosebench.runner.conditions import contention_warnings
    from rosebench.runner.console import summary_table

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        _warn_parallel_launcher()
    model = setup.model()
    results = RunResults(
        config=_public_config(asdict(setup.config), config),
        environment=setup.environment(),
        run=_run_info(config, model["short"]),
        model=model,
        target=setup.target_record(),
    )
    results.run.overrides = [redact(o) for o in results.run.overrides]
    tracked = _tracked_run(config.tracking, run_dir, results.run)
    with tracked or contextlib.nullcontext():
        try:
            outcome = run_passes(setup, run_dir)
        except BaseException:
            results.run.status, results.run.ended_at = "FAILED", _now()
            # Keep the config and environment of what was attempted; a full disk must not hide the error.
            _write_files(run_dir, {RESULTS_FILE: results.to_json()}, results, tracked)
            raise
        _record(results, outcome, run_dir)
        results.target = setup.target_record()  # with what the passes learnt (where counts came from)
        if outcome.passes:  # printed before any file is written: a full disk must not hide the figures
            title = f"rosebench {results.run.name}: {model['label']} on {setup.where()}"
            print(summary_table(title, results.metrics, results.metrics_std, len(outcome.passes)))
            for line in contention_warnings(results.passes):
                print(f"rosebench: warning: {line}", file=sys.stderr)
        if outcome.profile is not None:
            print(f"profiled pass (untimed, not in the figures above): {run_dir / 'profile'}")
            print(outcome.profile.summary.format())
        texts = {RESULTS_FILE: results.to_json()}
        if outcome.passes:
            texts[OUTPUTS_FILE] = outputs_text(
                metrics.request_rows(outcome.passes[-1], setup.detokenize, config.slo)
            )
        unwritten = _write_files(run_dir, texts, results, tracked)
    record = tracked.record if tracked is not None else None
    if tracked is not None and tracked.unwritten:
        unwritten[TRACKING_RECORD] = tracked.unwritten
    if unwritten:
        print(f"rosebench: error: {_unwritten_message(run_dir, unwritten, record)}", file=sys.stderr)
    else:
        print(f"results: {run_dir / RESULTS_FILE}")
    if record is not None and record.logged:
        from rosebench.tracking.store import ui_hint

        print(f"mlflow: {ui_hint(record.tracking_uri, record.run_id, record.url)}")
    if outcome.interrupted is not None:
        kept = f"{len(outcome.passes)} finished timed pass{'' if len(outcome.passes) == 1 else 'es'}"
        print(
            f"rosebench: interrupted by {outcome.interrupted} during {outcome.interrupted_during}; "
            f"kept {kept} in {run_dir / RESULTS_FILE} (status KILLED)",
            file=sys.stderr,
        )
        raise SystemExit(128 + outcome.interrupted.signum)
    if unwritten:
        raise SystemExit(1)
    return results.metrics


def _public_config(resolved: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The config as results.json, MLflow and the console show it: secrets out (a tracking URI's password,
    target.url's, target.api_key); for target=http, no engine and no batch limits (the server's are not
    this config's), so that what is recorded is what ran."""
    resolved["tracking"]["uri"] = redact_uri(config.tracking.uri)
    target = resolved["target"]
    if target.get("url") is not None:
        target["url"] = redact_uri(target["url"])
    if target.get("api_key") is not None:
        target["api_key"] = REDACTED
    if target["kind"] == "http":
        del resolved["engine"]
        for engine_side in ("max_batch_size", "max_batched_tokens"):
            del resolved["scheduler"][engine_side]
    return resolved


def _record(results: RunResults, outcome: Outcome, run_dir: Path) -> None:
    """What the passes produced, into the run's results: figures over the finished timed passes."""
    from rosebench.runner.conditions import contended

    results.metrics, results.metrics_std = outcome.aggregate()
    results.passes = outcome.pass_metrics
    if outcome.profile is not None:
        results.profile = ProfileRecord(
            summary=outcome.profile.summary,
            traces=[str(p.relative_to(run_dir)) for p in outcome.profile.traces],
            steps=outcome.profile.steps,
            warnings=outcome.profile.warnings,
        )
    run = results.run
    run.contended = contended(results.metrics)
    run.status, run.ended_at = ("KILLED" if outcome.interrupted else "FINISHED"), _now()
    run.interrupted_during, run.profile_error = outcome.interrupted_during, outcome.profile_error


def _write_files(
    run_dir: Path, texts: dict[str, str], results: RunResults, tracked: TrackedRun | None
) -> dict[str, str]:
    """Write each file of the run folder; a full disk or a folder gone read-only costs that one file, and
    the MLflow run gets every file from memory whatever reached the disk. Returns {file: why not written}."""
    unwritten = {}
    for name, text in texts.items():
        try:
            write_atomic(run_dir / name, text)
        except OSError as error:
            unwritten[name] = error.strerror or str(error)
    if tracked is not None:
        tracked.results, tracked.texts = results, texts
    return unwritten


def _unwritten_message(run_dir: Path, unwritten: dict[str, str], record: TrackingRecord | None) -> str:
    """Which files the run folder lacks and why, and where each one's content is instead."""
    failed = "; ".join(f"{run_dir / name} ({why})" for name, why in unwritten.items())
    contents = [name for name in unwritten if name != TRACKING_RECORD]
    if not contents:
        where = ""
    elif record is not None and record.logged:
        where = f"; {' and '.join(contents)} are artifacts of MLflow run {record.run_id}"
    else:
        why = "tracking is off" if record is None else "MLflow could not take them either"
        where = f"; {' and '.join(contents)} are lost ({why}); the figures are in the table above"
    if TRACKING_RECORD in unwritten and record is not None and record.logged:
        where += f"; {TRACKING_RECORD} would name that run, printed below"
    return f"could not write {failed}{where}"


def _scrub_hydra_files(run_dir: Path) -> None:
    """Hydra wrote the overrides, a URI's password included, into .hydra/ (and a sweep's multirun.yaml):
    take the password out before anything is logged or shared."""
    hc = HydraConfig.get()
    files = list((run_dir / ".hydra").glob("*.yaml"))
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for path in files:
        if path.is_file() and (redacted := redact(text := path.read_text())) != text:
            write_atomic(path, redacted)  # parallel jobs share multirun.yaml: each writes its own temp file


def _tracked_run(tracking: TrackingSettings, run_dir: Path, run: RunInfo) -> TrackedRun | None:
    """The MLflow run around the passes, or None with tracking off (then MLflow is never imported)."""
    if not tracking.enabled:
        return None
    from rosebench.tracking.tracked_run import TrackedRun

    sweep_dir = Path(run.sweep_dir) if run.sweep_dir else None
    return TrackedRun(tracking, run_dir, run.name, sweep_dir)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, float]:
    try:
        return _job(cfg)
    except SystemExit as leaving:
        _end_stopped_pool_worker(leaving)
        raise


def _end_stopped_pool_worker(leaving: SystemExit) -> None:
    """A parallel sweep's pooled worker (joblib's) stopped by a signal has kept its finished passes and
    ended its MLflow run by now: it exits, instead of idling in its pool while the launcher waits for its
    workers to end (CHILDREN_GRACE_S: a whole minute on every stopped parallel sweep)."""
    if signals.stopped_by is None or multiprocessing.current_process().name == "MainProcess":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(leaving.code if isinstance(leaving.code, int) else 1)


def _job(cfg: DictConfig) -> dict[str, float]:
    # Hydra logs into the run folder: on a full disk a failing log handler must not print tracebacks
    # between the figures and the one line that says what could not be written.
    logging.raiseExceptions = False
    # hydra.job.chdir=true moves a job into its run folder; user paths (engine.weights, workload.path, a
    # relative sqlite store, the default mlflow.db) stay the launch folder's, as without it.
    os.chdir(HydraConfig.get().runtime.cwd)
    try:
        config = load_config(cfg, HydraConfig.get().overrides.task)
        with stop_signals_as_interrupt():
            return benchmark(config)
    except ConfigError as error:
        print(f"rosebench: error: {error}", file=sys.stderr)
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # the other points run; the sweep exits 1 (FailedPointsCallback)
            record_failed_point(Path(hc.sweep.dir), str(error))
            return {}
        sys.exit(1)
    except KeyboardInterrupt as stop:  # before the passes began: nothing was measured
        print(
            f"rosebench: interrupted ({stop or 'SIGINT'}) before timing started; nothing was measured",
            file=sys.stderr,
        )
        sys.exit(128 + getattr(stop, "signum", signal.SIGINT))


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_python_warning_format = warnings.formatwarning


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """rosebench's own warnings as the one line a user reads, not a source path and a line of code;
    other packages' keep Python's format (there the source says where to look)."""
    if filename.startswith(_PACKAGE_DIR):
        return f"rosebench: warning: {message}\n"
    return _python_warning_format(message, category, filename, lineno, line)


def _config_groups() -> dict[str, list[str]]:
    """Each config group (not Hydra's own) and its options: YAML files in conf/, nodes registered in code."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    in_code = {name: store.list(name) for name in store.list("") if "." not in name and name != "hydra"}
    in_files = {p.name: [f.name for f in p.glob("*.yaml")] for p in conf_dir().iterdir() if p.is_dir()}
    in_files.pop("hydra", None)
    return {
        group: sorted(
            {name.removesuffix(".yaml") for name in [*in_code.get(group, []), *in_files.get(group, [])]}
        )
        for group in {*in_code, *in_files}
    }


_CHOICES = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP)


def _command_line_problem(args: list[str]) -> str | None:
    """What Hydra would refuse in a dozen lines (an option a group does not have: in a sweep, before any
    point runs) or run without a word (``~key`` brings the schema's default back), said in one line before
    anything is composed. None when the command line is fine, or when Hydra's own parser must say why."""
    groups = _config_groups()
    for arg in args:
        try:
            [override] = parse_overrides([arg])
        except Exception:  # a flag, a flag's value (--cfg job), or a syntax error Hydra reports itself
            continue
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if override.is_delete():
            return f"{arg}: deleting a key or group is not supported (every key has a default); set its value"
        if key not in groups or override.value_type not in (*_CHOICES, ValueType.ELEMENT):
            continue
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        options = groups[key]
        for value in values:
            if str(value) not in options:
                return f"{key}={value}: no such option (allowed: {', '.join(options)})"
    return None


# At import: a parallel sweep's workers import this module to run jobs, and never call main().
warnings.formatwarning = _one_line_warning


def main() -> None:
    # A sweep's launcher stopped by Ctrl-C or SIGTERM marks the sweep stopped (no new point starts; see
    # MlflowSweepCallback), passes the signal to its workers (each keeps its finished passes) and its exit
    # hook closes the MLflow runs KILLED.
    problem = _command_line_problem(sys.argv[1:])
    if problem is not None:
        print(f"rosebench: error: {problem}", file=sys.stderr)
        sys.exit(1)
    # Hydra finds sweepers by walking the hydra_plugins package, which misses an editable install's (pip
    # install -e .): hydra/sweeper=capacity is registered here instead (importing it stores its config
    # node). Here, not at import: a launcher's workers import this module, and registering scans plugins.
    Plugins.instance().register(CapacitySweeper)
    try:
        with stop_signals_as_interrupt():
            _hydra_main()
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"rosebench: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
