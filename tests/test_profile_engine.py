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


STEP_LABELS = {  # every label a profiled pass of this workload must show, with profile.detail=step
    "rosebench.engine.admit",
    "rosebench.engine.prefill",
    "rosebench.engine.decode",
    "rosebench.engine.prepare",
    "rosebench.engine.postprocess",
    "rosebench.model.forward",
    "rosebench.model.lm_head",
    "rosebench.sampler.sample",
    "rosebench.kv.compact",
}
LAYER_LABELS = {"rosebench.attention.kv_write", "rosebench.attention.attend"}


@pytest.mark.parametrize("mode", ["offline", "online"])
@pytest.mark.parametrize("detail", ["step", "layer"])
def test_profiled_engine_pass_has_prefill_and_decode_steps(mode: str, detail: str, tmp_path: Path) -> None:
    engine = Engine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=32))
    engine.layer_labels = detail == "layer"  # what the runner sets for the profiled pass
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
    expected = STEP_LABELS | (LAYER_LABELS if detail == "layer" else set())
    assert set(labels) == expected
    if detail == "layer":
        layers = engine.model_config.n_layer
        assert labels["rosebench.attention.attend"].count == layers * settings.active
    assert profile.summary.cpu_ops_per_decode_step > 0
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "key_averages.txt").is_file()


def test_static_decode_steps_are_labelled_and_layer_detail_runs_them_eagerly(tmp_path: Path) -> None:
    """The static step shows as one region per decode step; per-layer labels cannot live inside it (nor
    inside a CUDA graph), so asking for them runs decode on the eager path, where they appear."""
    engine = Engine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=32), static_decode=True)
    settings = ProfileSettings(enabled=True)
    for detail in ("step", "layer"):
        engine.clear_cache()
        engine.layer_labels = detail == "layer"
        with profile_session(settings, tmp_path / detail, engine.device) as session:
            OfflineScheduler(engine, SchedulerConfig(max_batch_size=4), on_step=lambda k: session.step()).run(
                requests(4, new=8)
            )
        labels = session.result.summary.labels
        decode_steps = settings.active - 1
        if detail == "step":
            assert labels["rosebench.engine.static_step"].count == decode_steps
            assert labels["rosebench.model.forward"].count == 1  # the prefill only
            assert not LAYER_LABELS & set(labels)
        else:
            assert "rosebench.engine.static_step" not in labels
            assert labels["rosebench.attention.attend"].count == engine.model_config.n_layer * settings.active


def test_profiling_off_creates_no_profiler(tmp_path: Path) -> None:
    engine = Engine(EngineConfig(model="tiny", max_num_seqs=2, max_model_len=16))
    with profile_session(ProfileSettings(enabled=False), tmp_path, engine.device) as session:
        OfflineScheduler(engine, SchedulerConfig(), on_step=lambda kind: session.step()).run(
            requests(2, new=3)
        )
    assert session.result is None and not list(tmp_path.iterdir())
    assert not torch.autograd.profiler._is_profiler_enabled
