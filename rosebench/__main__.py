"""``python -m rosebench [overrides]``: compose the config, benchmark, write the run folder, log to MLflow."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rosebench.conf_dir import conf_dir
from rosebench.runner.schema import register_schemas
from rosebench.tracking.settings import TrackingSettings

if TYPE_CHECKING:
    from rosebench.tracking import TrackedRun

log = logging.getLogger("rosebench")
register_schemas()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_block(cfg: DictConfig, profiled: bool) -> dict:
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    shown = [o for o in overrides if not o.startswith(("mode=", "tracking.uri=", "hydra."))]
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "name": "-".join([cfg.mode.value, *shown]) if shown else f"{cfg.mode.value}-{cfg.engine.model}",
        "mode": cfg.mode.value,
        "profiled": profiled,
        "status": "RUNNING",
        "overrides": overrides,
        "job_name": hc.job.name,
        "job_id": hc.job.get("id"),
        "job_num": hc.job.get("num") if multirun else None,
        "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None,
        "started_at": _now(),
        "ended_at": None,
    }


def _warn_parallel_launcher() -> None:
    launcher = HydraConfig.get().launcher
    if "joblib" in str(launcher.get("_target_", "")) and launcher.get("n_jobs", 1) != 1:
        warnings.warn(
            "parallel joblib jobs share this machine's cores (and GPU): their timings distort each other",
            stacklevel=2,
        )


def benchmark(cfg: DictConfig) -> dict:
    # Imported here so that `--help` and config errors stay fast.
    from rosebench import metrics
    from rosebench.profiling import format_summary, summary_metrics
    from rosebench.runner.benchmark import prepare, run_passes
    from rosebench.runner.console import summary_table
    from rosebench.runner.environment import environment
    from rosebench.runner.results import write_outputs, write_results
    from rosebench.runner.settings import run_settings

    settings = run_settings(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    setup = prepare(settings)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        _warn_parallel_launcher()
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "metrics": {},
        "metrics_std": {},
        "passes": [],
        "environment": environment(setup.engine.device),
        "profile": None,
        "run": _run_block(cfg, settings.profile.enabled),
    }
    tracked = _tracked_run(settings.tracking, run_dir, results["run"])
    with _sigterm_as_interrupt(), tracked or contextlib.nullcontext():
        try:
            outcome = run_passes(settings, setup, run_dir)
        except BaseException as error:
            results["run"]["status"] = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            results["run"]["ended_at"] = _now()
            write_results(run_dir, results)  # keep the config and environment of what was attempted
            raise
        results.update(metrics=outcome.metrics, metrics_std=outcome.metrics_std, passes=outcome.pass_metrics)
        if outcome.profile is not None:
            results["profile"] = {
                "summary": outcome.profile.summary,
                "metrics": summary_metrics(outcome.profile.summary),
                "traces": [str(p.relative_to(run_dir)) for p in outcome.profile.traces],
                "steps": outcome.profile.steps,
                "warnings": outcome.profile.warnings,
            }
        results["run"].update(status="FINISHED", ended_at=_now())
        write_outputs(run_dir, metrics.request_rows(outcome.passes[-1], setup.detokenize))
        write_results(run_dir, results)
        engine = f"{settings.engine.model} on {setup.engine.device} ({settings.engine.dtype})"
        title = f"rosebench {results['run']['name']}: {engine}"
        print(summary_table(title, outcome.metrics, outcome.metrics_std, settings.repeat))
        if outcome.profile is not None:
            print(f"profiled pass (untimed, not in the figures above): {run_dir / 'profile'}")
            print(format_summary(outcome.profile.summary))
    print(f"results: {run_dir / 'results.json'}")
    if tracked is not None and tracked.record.logged:
        from rosebench.tracking.store import ui_hint

        record = tracked.record
        print(f"mlflow: {ui_hint(record.tracking_uri, record.experiment_id, record.run_id)}")
    return results["metrics"]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Slurm and job runners stop a job with SIGTERM: end it like Ctrl-C, so that the partial results
    are kept and the MLflow run is marked KILLED rather than left RUNNING."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)  # a pooled worker (joblib) must stay stoppable


def _tracked_run(tracking: TrackingSettings, run_dir: Path, run: dict) -> TrackedRun | None:
    """The MLflow run around the passes, or None with tracking off (then MLflow is never imported)."""
    if not tracking.enabled:
        return None
    from rosebench.tracking import TrackedRun

    sweep_dir = Path(run["sweep_dir"]) if run["sweep_dir"] else None
    return TrackedRun(tracking, run_dir, run["name"], sweep_dir)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    from rosebench.runner.settings import ConfigError

    try:
        return benchmark(cfg)
    except ConfigError as error:
        print(f"rosebench: error: {error}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and runs the others
        sys.exit(1)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
