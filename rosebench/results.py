"""``results.json``, typed: what a run was, where it ran and what it measured. The runner writes it;
tracking, ``rosebench.report`` and ``rosebench.upload`` read it through ``RunResults`` only.

No torch and no MLflow here. Files from before ``format_version`` existed (version 1) read the same way:
their profile metrics are recomputed from the stored summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rosebench.files import write_atomic
from rosebench.profiling.summary import TraceSummary

RESULTS_FILE = "results.json"
FORMAT_VERSION = 2

# The figures a reader looks at first (MLflow's metrics, comparisons, a sweep's best point), and whether
# higher is better. Peak memory is CUDA's allocator peak on a GPU, the process's RSS on a CPU.
HEADLINE_METRICS: dict[str, bool] = {
    "throughput_completion_tok_s": True,
    "throughput_total_tok_s": True,
    "request_throughput_req_s": True,
    "goodput_req_s": True,
    "slo_attainment": True,
    **{f"{m}_ms_{q}": False for m in ("ttft", "tpot", "itl", "e2e") for q in ("p50", "p99")},
    "cuda_max_allocated_mb": False,
    "peak_rss_mb": False,
}


@dataclass
class RunInfo:
    """How the run was launched and how it ended."""

    name: str
    mode: str | None = None
    profiled: bool = False
    status: str = "RUNNING"  # RUNNING, FINISHED, FAILED or KILLED (MLflow's run statuses)
    overrides: list[str] = field(default_factory=list)
    job_name: str | None = None
    job_id: str | None = None
    job_num: int | None = None  # a sweep job's number, None for a single run
    sweep_dir: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    interrupted_during: str | None = None  # the pass an interrupt cut short (dropped from the figures)
    profile_error: str | None = None  # a failed profiled pass; the timed figures are kept
    # Whether the rest of the machine was busy during a timed pass (metrics["contention_max"] above
    # runner.conditions.CONTENDED_SHARE); None when not measured (results from before it was).
    contended: bool | None = None


@dataclass
class ProfileRecord:
    """The untimed profiled pass: its trace summary and the trace files (relative to the run folder)."""

    summary: TraceSummary
    traces: list[str]
    steps: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # The flat metrics are derived, written for readers of the JSON file, recomputed on reading.
        return {**asdict(self), "summary": self.summary.to_dict(), "metrics": self.summary.metrics()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileRecord:
        return cls(
            summary=TraceSummary.from_dict(data["summary"]),
            traces=list(data.get("traces", [])),
            steps=int(data.get("steps", data["summary"]["steps"])),
            warnings=list(data.get("warnings", [])),
        )


@dataclass
class RunResults:
    config: dict[str, Any]  # the resolved config that ran
    environment: dict[str, Any]
    run: RunInfo
    model: dict[str, Any] = field(default_factory=dict)  # the architecture loaded (layers, width, parameters)
    metrics: dict[str, float] = field(default_factory=dict)  # mean over the timed passes
    metrics_std: dict[str, float] = field(default_factory=dict)
    passes: list[dict[str, float]] = field(default_factory=list)  # each timed pass's own figures
    profile: ProfileRecord | None = None
    # target=serve|http: what served the requests (kind, URL without credentials, the server's model id,
    # the prompt form sent) and where token counts came from; None in-process.
    target: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def status(self) -> str:
        return self.run.status

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.to_dict() if self.profile is not None else None
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        profile = data.get("profile")
        return cls(
            config=data.get("config", {}),
            environment=data.get("environment", {}),
            run=RunInfo(**data["run"]),
            model=data.get("model", {}),
            metrics=data.get("metrics", {}),
            metrics_std=data.get("metrics_std", {}),
            passes=data.get("passes", []),
            profile=ProfileRecord.from_dict(profile) if profile else None,
            target=data.get("target"),
            format_version=data.get("format_version", 1),
        )

    def to_json(self) -> str:
        """The text of ``results.json``: what is written to the run folder and logged to MLflow."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, run_dir: Path) -> Path:
        """Write ``results.json`` atomically: a reader never sees a half-written file."""
        return write_atomic(run_dir / RESULTS_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: Path) -> RunResults:
        return cls.from_dict(json.loads((run_dir / RESULTS_FILE).read_text()))


def _json_safe(value: Any) -> Any:
    # JSON has no inf/nan: request_rate=inf is written as the string "inf".
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


OUTPUTS_FILE = "outputs.jsonl"
ERRORS_FILE = "errors.jsonl"  # over HTTP: the first failed requests, with their status and the server's body


def outputs_text(rows: list[dict[str, Any]]) -> str:
    """The text of ``outputs.jsonl``: one line per request of the last timed pass."""
    return "".join(json.dumps(_json_safe(row)) + "\n" for row in rows)
