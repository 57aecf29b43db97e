"""The profiler around the real engine and schedulers: both modes, labels in the trace, counts that agree."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from rosebench.engine import Engine, EngineConfig, SamplingParams
from rosebench.profiling import ProfileSettings, profile_session
from rosebench.scheduler import OfflineScheduler, OnlineScheduler, SchedulerConfig
from rosebench.workload import Request

SCHEDULERS = {"offline": OfflineScheduler, "online": OnlineScheduler}


def requests(n: int, new: int) -> list[Request]:
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    return [Request(i, [100 + i, 200 + i, 300 + i], params, arrival_s=0.0) for i in range(n)]


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_profiled_engine_pass_has_prefill_and_decode_steps(mode: str, tmp_path: Path) -> None:
    engine = Engine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=32))
    settings = ProfileSettings(enabled=True)  # default schedule: recording from the first step
    with profile_session(settings, tmp_path, engine.device) as session:
        scheduler = SCHEDULERS[mode](
            engine, SchedulerConfig(max_batch_size=4), on_step=lambda kind: session.step()
        )
        result = scheduler.run(requests(4, new=8))
    assert session.steps == result.stats.prefill_steps + len(result.stats.decode_step_s) == 8
    profile = session.result
    [trace] = profile.traces
    with gzip.open(trace, "rt") as f:
        names = [e.get("name") for e in json.load(f)["traceEvents"]]
    assert names.count("rosebench.engine.prefill") == 1
    assert names.count("rosebench.engine.decode") == settings.active - 1  # step 1 is the prefill
    assert sum(1 for n in names if str(n).startswith("ProfilerStep#")) >= settings.active
    labels = profile.summary.labels
    counts = {e.key: e.count for e in profile.key_averages[0] if e.key.startswith("rosebench.")}
    for label in ("rosebench.engine.prefill", "rosebench.engine.decode", "rosebench.model.forward"):
        assert labels[label].count == counts[label]
    layers = engine.model_config.n_layer
    assert labels["rosebench.attention.attend"].count == layers * settings.active
    assert profile.summary.cpu_ops_per_decode_step > 0
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "key_averages.txt").is_file()


def test_profiling_off_creates_no_profiler(tmp_path: Path) -> None:
    engine = Engine(EngineConfig(model="tiny", max_num_seqs=2, max_model_len=16))
    with profile_session(ProfileSettings(enabled=False), tmp_path, engine.device) as session:
        OfflineScheduler(engine, SchedulerConfig(), on_step=lambda kind: session.step()).run(
            requests(2, new=3)
        )
    assert session.result is None and not list(tmp_path.iterdir())
    assert not torch.autograd.profiler._is_profiler_enabled
