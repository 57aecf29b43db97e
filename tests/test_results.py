"""results.json as a typed document: written and read by RunResults, old files still readable."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rosebench.results import FORMAT_VERSION, RunResults

SUMMARY = {
    "window_ms": 12.5,
    "steps": 6,
    "decode_steps": 5,
    "labels": {"rosebench.engine.decode": {"count": 5, "total_ms": 10.0, "share": 0.8}},
    "cpu_ops_per_decode_step": 140.0,
    "kernels_per_decode_step": None,
    "device_busy_ms": None,
    "device_idle_fraction": None,
}

# As the first release wrote it: no format_version, profile metrics named profile_*.
VERSION_1 = {
    "config": {"mode": "offline", "scheduler": {"request_rate": "inf"}},
    "metrics": {"requests": 2.0, "tpot_ms_p50": 1.5},
    "metrics_std": {"tpot_ms_p50": 0.1},
    "passes": [{"requests": 2.0, "tpot_ms_p50": 1.5}],
    "environment": {"device": "cpu"},
    "profile": {
        "summary": SUMMARY,
        "metrics": {"profile_window_ms": 12.5, "profile_label_engine_decode_ms": 10.0},
        "traces": ["profile/trace_0.json.gz"],
        "steps": 6,
        "warnings": [],
    },
    "run": {
        "name": "offline-gpt2",
        "mode": "offline",
        "profiled": True,
        "status": "FINISHED",
        "overrides": [],
        "job_name": "__main__",
        "job_id": None,
        "job_num": None,
        "sweep_dir": None,
        "started_at": "2026-11-30T05:30:00+00:00",
        "ended_at": "2026-11-30T05:30:07+00:00",
    },
}


def test_version_1_file_reads_and_is_rewritten_as_current(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(VERSION_1))
    results = RunResults.read(tmp_path)
    assert results.format_version == 1 and results.status == "FINISHED"
    assert (
        results.profile is not None and results.profile.summary.labels["rosebench.engine.decode"].count == 5
    )
    # Profile metrics are derived from the summary, under the current names.
    assert results.profile.summary.metrics()["label_engine_decode_ms"] == 10.0

    results.format_version = FORMAT_VERSION
    results.write(tmp_path)
    again = RunResults.read(tmp_path)
    assert again == results
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["format_version"] == FORMAT_VERSION
    assert written["profile"]["metrics"]["window_ms"] == 12.5
    assert not list(tmp_path.glob("*.tmp")), "the temporary file of the atomic write was left behind"


def test_non_finite_config_values_are_written_as_text(tmp_path: Path) -> None:
    results = RunResults.from_dict(VERSION_1)
    results.config["scheduler"]["request_rate"] = math.inf
    results.write(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["config"]["scheduler"]["request_rate"] == "inf"
