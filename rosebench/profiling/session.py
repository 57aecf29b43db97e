"""A scheduled torch.profiler session stepped once per scheduler step, exporting each cycle as it ends.

Usage (the scheduler calls ``session.step()`` after each of its steps, prefill and decode alike)::

    with profile_session(settings, out_dir, device) as session:
        run_pass(step_hook=session.step)
    result = session.result  # None when profiling is off

Files written to ``out_dir``: ``trace_{cycle}.json.gz`` (one per completed or interrupted active phase),
``key_averages.txt`` and ``summary.json``. libkineto's routine lines on stderr where a trace starts or stops
are filtered out (``kineto_log``); anything else it writes passes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import torch
from torch.autograd.profiler_util import EventList
from torch.profiler import ProfilerAction, ProfilerActivity

from rosebench.profiling.kineto_log import QuietKineto
from rosebench.profiling.settings import ProfileSettings
from rosebench.profiling.summary import TraceSummary, summarize_traces

_ACTIVITIES = {"cpu": ProfilerActivity.CPU, "cuda": ProfilerActivity.CUDA}
_RECORDING = frozenset({ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE})


class ProfileScheduleWarning(UserWarning):
    """The profiled pass ran fewer steps than the profiler schedule needs."""


def profiler_activities(settings: ProfileSettings, device: torch.device) -> list[ProfilerActivity]:
    """``auto``: CPU, plus CUDA on a CUDA device; else the activities named."""
    if settings.activities == "auto":
        names = ["cpu", "cuda"] if device.type == "cuda" else ["cpu"]
    else:
        names = settings.activity_names()
    return [_ACTIVITIES[name] for name in names]


@dataclass
class ProfileResult:
    """What a profiled pass left behind; ``key_averages[i]`` belongs to ``traces[i]``."""

    steps: int
    traces: list[Path]
    key_averages: list[EventList]
    summary: TraceSummary
    summary_path: Path
    key_averages_path: Path
    warnings: list[str] = field(default_factory=list)


class ProfileSession:
    """Context manager around ``torch.profiler.profile`` with a schedule; ``step()`` is the per-step hook."""

    def __init__(self, settings: ProfileSettings, out_dir: str | Path, device: torch.device) -> None:
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.activities = profiler_activities(settings, device)
        self.steps = 0
        self.result: ProfileResult | None = None
        self._traces: list[Path] = []
        self._key_averages: list[EventList] = []
        self._prof: torch.profiler.profile | None = None
        self._kineto: QuietKineto | None = None
        self._cleanup = contextlib.ExitStack()

    def __enter__(self) -> ProfileSession:
        s = self.settings
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # warmup=0 is deliberate here (see ProfileSettings); torch warns about it regardless.
            warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
            self._schedule = torch.profiler.schedule(
                wait=s.wait, warmup=s.warmup, active=s.active, repeat=s.repeat, skip_first=s.skip_first
            )
        self._prof = torch.profiler.profile(
            activities=self.activities,
            schedule=self._schedule,
            on_trace_ready=self._export_cycle,
            record_shapes=s.record_shapes,
            profile_memory=s.profile_memory,
            with_stack=s.with_stack,
        )
        cuda = ProfilerActivity.CUDA in self.activities
        with contextlib.ExitStack() as stack:
            self._kineto = stack.enter_context(QuietKineto(cuda_profiled=cuda))
            with self._kineto.quiet():
                self._prof.__enter__()
            self._cleanup = stack.pop_all()
        return self

    def step(self) -> None:
        """Call once per scheduler step (prefill and decode steps alike)."""
        if self._prof is None:
            raise RuntimeError("ProfileSession.step() called outside its with-block")
        if self._starts_or_stops_a_trace():
            with self._kineto.quiet():
                self._prof.step()
        else:
            self._prof.step()
        self.steps += 1

    def _starts_or_stops_a_trace(self) -> bool:
        """Whether the coming ``step()`` moves the profiler into or out of a trace (or ends a cycle), where
        kineto logs. ``self.steps`` is the profiler's own step number."""
        now, after = self._schedule(self.steps), self._schedule(self.steps + 1)
        return now == ProfilerAction.RECORD_AND_SAVE or (now != after and not {now, after} <= _RECORDING)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        prof, self._prof = self._prof, None
        # Stopping mid-active fires on_trace_ready once more: a short pass still exports what it recorded.
        with self._cleanup, self._kineto.quiet():
            prof.__exit__(exc_type, exc, tb)
        if exc_type is None:  # after a failure, leave the original error alone
            self.result = self._finish()

    def _export_cycle(self, prof: torch.profiler.profile) -> None:
        # The only export of this cycle's trace: a second one raises "Trace is already saved".
        path = self.out_dir / f"trace_{len(self._traces)}.json.gz"
        prof.export_chrome_trace(str(path))  # torch writes a temp .json and gzips it for a .gz path
        self._traces.append(path)
        self._key_averages.append(prof.key_averages())

    def _finish(self) -> ProfileResult:
        s = self.settings
        notes = []
        if self.steps < s.steps_needed:
            if self._traces:
                outcome = "the trace holds only the steps recorded before it ended"
            else:
                outcome = "nothing was recorded"
            notes.append(
                f"profiled pass ran {self.steps} steps but the schedule needs "
                f"skip_first+wait+warmup+active = {s.skip_first}+{s.wait}+{s.warmup}+{s.active} = "
                f"{s.steps_needed}; {outcome}"
            )
        for note in notes:
            warnings.warn(note, ProfileScheduleWarning, stacklevel=3)

        summary = summarize_traces(self._traces)
        summary_path = self.out_dir / "summary.json"
        summary.write(summary_path)
        key_averages_path = self.out_dir / "key_averages.txt"
        key_averages_path.write_text(self._key_averages_text(notes))
        return ProfileResult(
            self.steps,
            list(self._traces),
            list(self._key_averages),
            summary,
            summary_path,
            key_averages_path,
            notes,
        )

    def _key_averages_text(self, notes: list[str]) -> str:
        # "self_cuda_time_total" still works but is deprecated in favour of the device_* name.
        on_device = ProfilerActivity.CUDA in self.activities
        sort_by = "self_device_time_total" if on_device else "self_cpu_time_total"
        parts = [f"# warning: {note}" for note in notes]
        parts += [
            f"# cycle {i} ({path.name})\n{averages.table(sort_by=sort_by, row_limit=self.settings.row_limit)}"
            for i, (path, averages) in enumerate(zip(self._traces, self._key_averages, strict=True))
        ]
        if not self._traces:
            parts.append("# no profiler cycle reached an active step: nothing was recorded")
        return "\n".join(parts) + "\n"


class NullProfileSession:
    """Stands in when profiling is off: no profiler object exists, and ``step()`` does nothing."""

    result: ProfileResult | None = None

    def __enter__(self) -> NullProfileSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def step(self) -> None:
        return None


def profile_session(
    settings: ProfileSettings, out_dir: str | Path, device: torch.device
) -> ProfileSession | NullProfileSession:
    """A ``ProfileSession`` when ``settings.enabled``, else a free no-op stand-in with the same interface."""
    return ProfileSession(settings, out_dir, device) if settings.enabled else NullProfileSession()
