"""Sweeps on Slurm (hydra/launcher=slurm or slurm_cpu, through submitit): which job runs which point, and
job states on clusters without accounting.

submitit follows its jobs with `sacct`. Where accounting is off (small clusters), every call fails with
a warning and the line "Slurm accounting storage is disabled", and a job that died without writing its
result (a time limit, `scancel`) stays UNKNOWN, so the launcher waits for it forever. There job states
come from `squeue --states=all` instead, and a job that has left the queue is over.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_ACCOUNTING_OFF = "accounting storage is disabled"


def accounting_enabled() -> bool:
    """Whether `sacct` answers on this cluster."""
    try:
        probe = subprocess.run(["sacct", "--noheader", "--jobs", "1"], capture_output=True, text=True)
    except OSError:
        return False
    return probe.returncode == 0 or _ACCOUNTING_OFF not in probe.stderr.lower()


def _watcher_class(accounting: bool) -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SweepJobWatcher(SlurmInfoWatcher):
        """Says which Slurm job runs which sweep point; reads states from squeue without accounting."""

        def register_job(self, job_id: str) -> None:
            if "_" in job_id:  # a task of the sweep's job array, whose index is the point's
                point = job_id.split("_")[1]
                print(f"rosebench: Slurm job {job_id} runs sweep point #{point}", file=sys.stderr, flush=True)
            super().register_job(job_id)

        def _make_command(self) -> list[str] | None:
            if accounting:
                return super()._make_command()
            if not self._registered - self._finished:
                return None
            # All of this user's jobs: naming one that has left the queue would make squeue fail.
            return ["squeue", "--noheader", "--states=all", "--me", "--format=%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if accounting:
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            info = super().read_info("JobID|State|NodeList\n" + text)
            # A job squeue no longer lists has ended (its result file, if any, tells how).
            for job_id in self._registered - self._finished - set(info):
                info[job_id] = {"JobID": job_id, "State": "GONE", "NodeList": ""}
            return info

    return SweepJobWatcher


class SlurmJobsCallback(Callback):
    """In a Slurm sweep's launcher process, before any job is submitted: install the job watcher.
    Other launchers (and single runs) import nothing."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "SlurmLauncher" not in str(config.hydra.launcher.get("_target_", "")):
            return
        from submitit.slurm.slurm import SlurmJob

        accounting = accounting_enabled()
        if not accounting:
            print(
                "rosebench: Slurm accounting is off (sacct fails here); job states come from squeue",
                file=sys.stderr,
            )
        SlurmJob.watcher = _watcher_class(accounting)(delay_s=SlurmJob.watcher._delay_s)
