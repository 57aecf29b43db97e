"""``hydra/sweeper=capacity``: the highest load whose SLO attainment holds (rosebench.capacity's search).

python -m rosebench --multirun hydra/sweeper=capacity mode=online slo.ttft_ms=200 slo.attainment=0.9

Each run is a job of the sweep (its own folder, a child of the sweep's MLflow parent) with
``<knob>=<value> trial=<n>``; the search reads its timed passes from results.json. Hydra accepts sweeper
plugins only from the ``hydra_plugins`` package: this module is the Hydra side, the search is rosebench's.
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scan executes this module before it is in
# sys.modules, where a dataclass with string annotations cannot look its module up.
import copy
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from rosebench.capacity import CapacityReport, CapacitySearch, CapacitySettings
from rosebench.config import ConfigError, RunConfig, load_config
from rosebench.failed_points import record_failed_point
from rosebench.overrides import parse_overrides
from rosebench.results import RESULTS_FILE, RunResults
from rosebench.tracking.settings import redact

log = logging.getLogger(__name__)


@dataclass
class CapacitySweeperConf(CapacitySettings):
    _target_: str = "hydra_plugins.rosebench_capacity.capacity_sweeper.CapacitySweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="capacity", node=CapacitySweeperConf, provider="rosebench"
)


def _is_capacity_sweep(config: DictConfig) -> bool:
    return config.hydra.sweeper.get("_target_") == CapacitySweeperConf._target_


def settings_of(config: DictConfig) -> CapacitySettings:
    params = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    assert isinstance(params, dict)
    params.pop("_target_", None)
    return CapacitySettings(**params)


def capacity_problem(config: DictConfig) -> str | None:
    """Why a capacity search with this composed config cannot run (one line), or None."""
    try:
        settings = settings_of(config)
    except ValueError as error:
        return str(error)
    overrides = list(config.hydra.overrides.task)
    for override in parse_overrides(overrides):
        if override.key_or_group == settings.knob:
            return (
                f"{override.input_line}: the search moves {settings.knob} itself "
                "(hydra.sweeper.start sets its first value): leave it off the command line"
            )
        if override.is_sweep_override():
            return f"{override.input_line}: a capacity search moves {settings.knob} alone; give one value"
    job = copy.deepcopy(config)
    with open_dict(job):
        del job["hydra"]
    try:
        run = load_config(job, overrides)
    except ConfigError as error:
        return str(error)
    return _run_problem(run, settings)


def _run_problem(run: RunConfig, settings: CapacitySettings) -> str | None:
    if run.mode != "online":
        return (
            f"mode={run.mode}: a capacity search needs mode=online (offline has no arrivals to load it with)"
        )
    if not run.slo.bounded:
        return (
            "no SLO is set: give slo.ttft_ms, slo.tpot_ms or slo.e2e_ms (the search finds the highest "
            f"{settings.knob} whose requests meet them)"
        )
    needed = settings.requests_needed(run.slo.attainment)
    if needed is None:
        return (
            f"slo.attainment={run.slo.attainment:g}: no number of requests shows an attainment of 1 with an "
            "interval; set a target below 1"
        )
    pooled = run.num_requests * run.repeat * settings.max_trials
    if pooled < needed:
        return (
            f"slo.attainment={run.slo.attainment:g} needs {needed} requests, all meeting the SLO, for a "
            f"{settings.confidence:.0%} interval to clear it; a probe pools at most num_requests x repeat x "
            f"hydra.sweeper.max_trials = {run.num_requests} x {run.repeat} x {settings.max_trials} = "
            f"{pooled}: raise one of them (or lower hydra.sweeper.confidence)"
        )
    return None


class CapacityCheck(Callback):
    """Refuses a capacity search's bad settings in one line before the sweep starts (and before its MLflow
    parent run exists): Hydra calls callbacks before it instantiates the sweeper."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_capacity_sweep(config) and (problem := capacity_problem(config)) is not None:
            print(f"rosebench: error: {problem}", file=sys.stderr)
            sys.exit(1)


class CapacitySweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        self.settings = CapacitySettings(**params)
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        assert self.config is not None and self.launcher is not None
        if (problem := capacity_problem(self.config)) is not None:  # also when no CapacityCheck ran
            print(f"rosebench: error: {problem}", file=sys.stderr)
            sys.exit(1)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        slo = OmegaConf.to_container(self.config.slo, resolve=True)
        search = CapacitySearch(self.settings, target=float(slo.pop("attainment")))
        returns: list[JobReturn] = []
        stop_reason = "interrupted"  # what the report says when a signal ends the search
        try:
            while (value := search.next_value()) is not None:
                if (failure := self._probe(search, value, arguments, returns, sweep_dir)) is not None:
                    stop_reason = failure
                    break
            else:
                stop_reason = search.stop_reason or ""
        finally:  # the probes that ran are kept, however the search ended
            report = CapacityReport.of(search, slo, stop_reason, [redact(o) for o in arguments])
            report.save(sweep_dir)
        print(report.summary())
        return returns

    def _probe(
        self,
        search: CapacitySearch,
        value: float,
        arguments: list[str],
        returns: list[JobReturn],
        sweep_dir: Path,
    ) -> str | None:
        """One run at ``value``, recorded in ``search``; a reason to stop when the run did not finish."""
        assert self.launcher is not None
        knob, trial = self.settings.knob, search.current.trials if search.current else 0
        shown = str(int(value)) if self.settings.integer else f"{value:g}"  # as typed: 64, 2.5
        overrides = [*arguments, f"{knob}={shown}", f"trial={trial}"]
        [job] = self.launcher.launch([overrides], initial_job_idx=len(returns))
        returns.append(job)
        run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir) if job.hydra_cfg is not None else None
        if job.status == JobStatus.FAILED:
            error = job._return_value  # JobReturn.return_value would raise it
            reason = f"the run at {knob}={shown} failed ({type(error).__name__}: {error})"
            record_failed_point(sweep_dir, reason)
            return reason
        results = RunResults.read(run_dir) if run_dir and (run_dir / RESULTS_FILE).is_file() else None
        if results is None or results.status != "FINISHED" or not results.passes:
            ended = results.status if results else "no results.json"
            reason = f"the run at {knob}={shown} did not finish ({ended})"
            record_failed_point(sweep_dir, reason)
            return reason
        met = sum(round(p["slo_attainment"] * p["requests"]) for p in results.passes)
        requests = sum(int(p["requests"]) for p in results.passes)
        probe = search.record(met, requests, str(run_dir), contended=bool(results.run.contended))
        low, high = probe.interval
        verdict = probe.verdict if probe.decided else "unsure so far: another trial"
        print(
            f"capacity: {knob}={shown} trial {trial}: {met}/{requests} met the SLO; pooled over "
            f"{probe.trials} trial(s) {probe.met}/{probe.requests}, interval [{low:.3f}, {high:.3f}] "
            f"vs {search.target:g}: {verdict}",
            flush=True,
        )
        return None
